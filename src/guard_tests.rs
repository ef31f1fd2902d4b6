use super::*;

fn guard() -> Guard {
    Guard {
        error_rate: Some(0.5),
        min_requests: 20,
        window_s: 10,
        eject_s: 30,
        max_ejected_percent: 50,
        failure_codes: Guard::DEFAULT_FAILURE_CODES.to_vec(),
        relative_margin: None,
        latency: None,
        abandoned_after_ms: Guard::DEFAULT_ABANDONED_AFTER_MS,
        grpc_failure_codes: Guard::DEFAULT_GRPC_FAILURE_CODES.to_vec(),
        latency_relative_margin: None,
    }
}

fn seen(weight: u32, requests: u64, failures: u64) -> Seen {
    Seen {
        weight,
        requests,
        failures,
        slow: 0,
        read: Read {
            requests,
            failures,
            slow: 0,
        },
        ejection: Ejection::default(),
    }
}

fn counts(requests: u64, failures: u64, slow: u64) -> Counts {
    Counts::exact(requests, failures, slow)
}

impl Guard {
    /// Whether `outcome` counts as a failure when it is not timed.
    fn failed(&self, outcome: Outcome) -> bool {
        self.judge(outcome, None).is_some_and(|v| v.failed)
    }
}

fn ejected(changes: &[Change]) -> Vec<usize> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Eject { upstream, .. } => Some(*upstream),
            _ => None,
        })
        .collect()
}

#[test]
fn buckets_add_up_and_restart_on_a_new_slice() {
    let b = Bucket::default()
        .add(100, counts(3, 1, 2))
        .add(100, counts(2, 2, 1));
    assert_eq!(
        b,
        Bucket {
            slice: 100,
            counts: counts(5, 3, 3)
        }
    );
    assert_eq!(
        b.add(101, counts(1, 0, 1)),
        Bucket {
            slice: 101,
            counts: counts(1, 0, 1)
        }
    );
}

#[test]
fn window_counts_only_its_slices_and_those_since_readmission() {
    let buckets: Vec<Bucket> = (90..=100)
        .map(|s| Bucket {
            slice: s,
            counts: counts(10, s - 90, 1),
        })
        .collect();
    // Slices 91..=100.
    assert_eq!(window_totals(&buckets, 100, 0), counts(100, 55, 10));
    // Readmitted in slice 98: slices 98..=100.
    assert_eq!(window_totals(&buckets, 100, 98), counts(30, 27, 3));
    assert_eq!(window_totals(&buckets, 200, 0), Counts::default());
}

#[test]
fn a_window_is_ten_slices_whatever_its_length() {
    assert_eq!(slice_ms(1), 100);
    assert_eq!(slice_ms(10), 1000);
    assert_eq!(slice_ms(3600), 360_000);
    let e = Ejection {
        until_ms: 35_000,
        ..Ejection::default()
    };
    assert!(e.is_ejected(34_000) && !e.is_ejected(35_000));
}

#[test]
fn a_failing_upstream_is_ejected_and_its_weight_goes_to_the_others() {
    let changes = guard().decide(1_000_000, &[seen(50, 100, 0), seen(50, 100, 60)]);
    assert_eq!(
        changes,
        [Change::Eject {
            upstream: 1,
            state: Ejection {
                since_ms: 1_000_000,
                until_ms: 1_030_000,
                times: 0,
                readmission_reported: false,
                since_wall_s: 0,
            },
            reason: Reason::Errors,
            rate: 0.6,
            requests: 100,
        }]
    );
    let states = [
        Ejection::default(),
        Ejection {
            until_ms: 1_030_000,
            ..Ejection::default()
        },
    ];
    assert_eq!(admitted_weights(&[50, 50], &states, 1_000_000), [50, 0]);
    assert_eq!(admitted_weights(&[50, 50], &states, 1_030_000), [50, 50]);
}

#[test]
fn too_few_requests_or_a_rate_at_the_threshold_do_not_eject() {
    assert!(guard()
        .decide(1_000_000, &[seen(1, 100, 0), seen(1, 19, 19)])
        .is_empty());
    assert!(guard()
        .decide(1_000_000, &[seen(1, 100, 0), seen(1, 100, 50)])
        .is_empty());
}

#[test]
fn never_more_than_max_ejected_percent_and_never_the_last_upstream() {
    // All fail: only 50 % of the weight may go, the worst first.
    let all = [
        seen(25, 100, 90),
        seen(25, 100, 95),
        seen(25, 100, 80),
        seen(25, 100, 70),
    ];
    assert_eq!(ejected(&guard().decide(1_000_000, &all)), [1, 0]);
    // 100 % allowed, but the last upstream with weight stays.
    let g = Guard {
        max_ejected_percent: 100,
        ..guard()
    };
    assert_eq!(ejected(&g.decide(1_000_000, &all)), [1, 0, 2]);
    assert_eq!(
        ejected(&g.decide(1_000_000, &[seen(1, 100, 100)])),
        Vec::<usize>::new()
    );
}

#[test]
fn readmission_is_reported_once_and_failing_again_backs_off() {
    let g = guard();
    let back = Ejection {
        since_ms: 1_000_000,
        until_ms: 1_030_000,
        times: 0,
        readmission_reported: false,
        since_wall_s: 0,
    };
    let mut up = seen(50, 0, 0);
    up.ejection = back;
    let changes = g.decide(1_030_000, &[seen(50, 100, 0), up]);
    assert_eq!(
        changes,
        [Change::Readmit {
            upstream: 1,
            state: Ejection {
                readmission_reported: true,
                ..back
            }
        }]
    );
    // Failing again within a window of readmission: twice as long.
    up = seen(50, 40, 40);
    up.ejection = Ejection {
        readmission_reported: true,
        ..back
    };
    let changes = g.decide(1_035_000, &[seen(50, 100, 0), up]);
    assert_eq!(
        changes,
        [Change::Eject {
            upstream: 1,
            state: Ejection {
                since_ms: 1_035_000,
                until_ms: 1_095_000,
                times: 1,
                readmission_reported: false,
                since_wall_s: 0,
            },
            reason: Reason::Errors,
            rate: 1.0,
            requests: 40,
        }]
    );
    // The backoff is bounded.
    up.ejection = Ejection {
        times: MAX_BACKOFF,
        ..up.ejection
    };
    let Change::Eject { state, .. } = g.decide(1_035_000, &[seen(50, 100, 0), up])[0] else {
        panic!("not ejected");
    };
    assert_eq!(
        (state.times, state.until_ms - 1_035_000),
        (MAX_BACKOFF, 30_000 << MAX_BACKOFF)
    );
}

#[test]
fn a_healthy_window_after_readmission_forgives_the_backoff() {
    let mut up = seen(50, 40, 0);
    up.ejection = Ejection {
        since_ms: 900_000,
        until_ms: 1_000_000,
        times: 2,
        readmission_reported: true,
        since_wall_s: 0,
    };
    assert_eq!(guard().decide(1_005_000, &[seen(50, 1, 0), up]), []);
    assert_eq!(
        guard().decide(1_010_000, &[seen(50, 1, 0), up]),
        [Change::Forgive {
            upstream: 1,
            state: Ejection {
                times: 0,
                ..up.ejection
            }
        }]
    );
}

#[test]
fn outcomes_blame_only_the_upstream() {
    let g = guard();
    let failed = |status, flags| g.judge(outcome(status, flags), None).map(|v| v.failed);
    assert_eq!(failed(Some(200), Some(0)), Some(false));
    assert_eq!(failed(Some(404), None), Some(false));
    assert_eq!(failed(Some(503), Some(0x20)), Some(true));
    // Reset before any response: upstream reset counts; a client abort (DC) that was not
    // timed says nothing.
    assert_eq!(failed(None, Some(0x10)), Some(true));
    assert_eq!(failed(Some(0), Some(0x4000)), None);
    assert_eq!(failed(None, None), None);
    assert_eq!(outcome(Some(0), Some(0x4000)), Outcome::Abandoned);
}

#[test]
fn by_default_only_statuses_of_upstream_health_fail() {
    let g = guard();
    for code in [500, 502, 503, 504] {
        assert!(g.failed(Outcome::Status(code)), "{code}");
    }
    // What a client can provoke: a method the app does not implement, an HTTP version.
    for code in [200, 404, 429, 501, 505, 507, 599] {
        assert!(!g.failed(Outcome::Status(code)), "{code}");
    }
    // Envoy's own 503 for a connection failure counts whatever the codes say.
    let only_500 = Guard {
        failure_codes: vec![500],
        ..guard()
    };
    assert_eq!(outcome(Some(503), Some(0x20)), Outcome::UpstreamFailure);
    assert!(only_500.failed(Outcome::UpstreamFailure));
    assert!(!only_500.failed(Outcome::Status(503)));
    assert!(only_500.failed(Outcome::Status(500)));
    // Flags are read for 5xx and for no status only.
    assert!(!needs_flags(Some(200), None) && !needs_flags(Some(499), None));
    assert!(needs_flags(Some(500), None) && needs_flags(None, None) && needs_flags(Some(0), None));
    // And for a failed gRPC call answered HTTP 200, not for an OK one.
    assert!(needs_flags(Some(200), Some(14)) && !needs_flags(Some(200), Some(0)));
    assert_eq!(parse_grpc_status(b" 14"), Some(14));
    assert_eq!(parse_grpc_status(b"x"), None);
}

#[test]
fn relative_mode_ejects_only_an_upstream_worse_than_the_others() {
    let g = Guard {
        relative_margin: Some(0.2),
        ..guard()
    };
    // Everything fails everywhere: nothing is worse than the rest.
    assert_eq!(
        ejected(&g.decide(1_000_000, &[seen(50, 100, 100), seen(50, 100, 100)])),
        Vec::<usize>::new()
    );
    // A regression on the canary: 90 % against 10 %.
    assert_eq!(
        ejected(&g.decide(1_000_000, &[seen(90, 900, 90), seen(10, 100, 90)])),
        [1]
    );
    // Within the margin (70 % against 55 %): kept.
    assert_eq!(
        ejected(&g.decide(1_000_000, &[seen(50, 100, 55), seen(50, 100, 70)])),
        Vec::<usize>::new()
    );
    // Nothing to compare with (the others saw fewer than min_requests): kept.
    assert_eq!(
        ejected(&g.decide(1_000_000, &[seen(50, 10, 0), seen(50, 100, 100)])),
        Vec::<usize>::new()
    );
    // The absolute mode ejects the same canary whatever the others do.
    assert_eq!(
        ejected(&guard().decide(1_000_000, &[seen(50, 100, 100), seen(50, 100, 100)])),
        [0]
    );
}

// ---- the latency condition ----

fn latency_guard(percentile_milli: u64, threshold_ms: u64) -> Guard {
    Guard {
        error_rate: None,
        latency: Some(Latency {
            percentile_milli,
            threshold_ms,
        }),
        ..guard()
    }
}

fn slow(weight: u32, requests: u64, slow: u64) -> Seen {
    let base = seen(weight, requests, 0);
    Seen {
        slow,
        read: Read { slow, ..base.read },
        ..base
    }
}

/// The nearest-rank percentile of `durations`, computed the long way.
fn nearest_rank(durations: &[u64], percentile_milli: u64) -> u64 {
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    let n = sorted.len() as u64;
    // The smallest rank r with r / n >= P / 100.
    let rank = (n * percentile_milli).div_ceil(100_000).max(1);
    sorted[usize::try_from(rank - 1).unwrap()]
}

#[test]
fn the_percentile_is_above_the_threshold_exactly_when_more_than_its_complement_are_slow() {
    // Every count of slow requests among n, for several percentiles and thresholds, against the
    // percentile computed from the durations themselves.
    for percentile_milli in [50_000, 90_000, 95_000, 99_000, 99_900, 100_000] {
        for n in [1u64, 19, 20, 21, 100, 1000, 1001] {
            for slow_count in 0..=n.min(120) {
                let durations: Vec<u64> = (0..n)
                    .map(|i| if i < slow_count { 400 } else { 3 })
                    .collect();
                let latency = Latency {
                    percentile_milli,
                    threshold_ms: 250,
                };
                assert_eq!(
                    latency.exceeded(n, slow_count),
                    nearest_rank(&durations, percentile_milli) > 250,
                    "p{percentile_milli}/1000, {slow_count} slow of {n}"
                );
            }
        }
    }
    // The threshold itself is not slow: only above it.
    let l = Latency {
        percentile_milli: 95_000,
        threshold_ms: 250,
    };
    assert!(!l.slow(250) && l.slow(251) && !l.slow(0));
}

#[test]
fn a_slow_upstream_is_ejected_for_latency_and_a_fast_one_is_not() {
    let g = latency_guard(95_000, 250);
    // 6 of 100 slow (over 5 %): p95 is above 250 ms.
    let changes = g.decide(1_000_000, &[slow(50, 100, 0), slow(50, 100, 6)]);
    assert_eq!(
        changes,
        [Change::Eject {
            upstream: 1,
            state: Ejection {
                since_ms: 1_000_000,
                until_ms: 1_030_000,
                times: 0,
                readmission_reported: false,
                since_wall_s: 0,
            },
            reason: Reason::Latency,
            rate: 0.06,
            requests: 100,
        }]
    );
    // Exactly 5 % slow: p95 is still a fast request.
    assert_eq!(
        g.decide(1_000_000, &[slow(50, 100, 0), slow(50, 100, 5)]),
        []
    );
    // Too few requests, however slow.
    assert_eq!(
        g.decide(1_000_000, &[slow(50, 100, 0), slow(50, 19, 19)]),
        []
    );
    // Without an error rate, failures never eject.
    assert_eq!(
        g.decide(1_000_000, &[seen(50, 100, 0), seen(50, 100, 100)]),
        []
    );
}

#[test]
fn with_both_conditions_either_ejects_and_errors_are_named_first() {
    let g = Guard {
        latency: Some(Latency {
            percentile_milli: 95_000,
            threshold_ms: 250,
        }),
        ..guard()
    };
    let reasons = |ups: &[Seen]| -> Vec<(usize, Reason)> {
        g.decide(1_000_000, ups)
            .iter()
            .filter_map(|c| match c {
                Change::Eject {
                    upstream, reason, ..
                } => Some((*upstream, *reason)),
                _ => None,
            })
            .collect()
    };
    let mut both = slow(50, 100, 100);
    both.failures = 60;
    assert_eq!(
        reasons(&[slow(50, 100, 0), slow(50, 100, 10)]),
        [(1, Reason::Latency)]
    );
    assert_eq!(
        reasons(&[slow(50, 100, 0), seen(50, 100, 60)]),
        [(1, Reason::Errors)]
    );
    assert_eq!(reasons(&[slow(50, 100, 0), both]), [(1, Reason::Errors)]);
}

#[test]
fn latency_ejections_keep_the_caps_and_back_off_like_errors() {
    let g = latency_guard(95_000, 250);
    // Every upstream slow: 50 % of the weight at most, the slowest first.
    let all = [
        slow(25, 100, 90),
        slow(25, 100, 95),
        slow(25, 100, 80),
        slow(25, 100, 70),
    ];
    assert_eq!(ejected(&g.decide(1_000_000, &all)), [1, 0]);
    let everything = Guard {
        max_ejected_percent: 100,
        ..g.clone()
    };
    // 100 % allowed, and still the last upstream with weight stays.
    assert_eq!(ejected(&everything.decide(1_000_000, &all)), [1, 0, 2]);
    // Slow again within a window of its readmission: twice as long.
    let mut up = slow(50, 40, 40);
    up.ejection = Ejection {
        since_ms: 1_000_000,
        until_ms: 1_030_000,
        times: 0,
        readmission_reported: true,
        since_wall_s: 0,
    };
    let Change::Eject { state, reason, .. } = g.decide(1_035_000, &[slow(50, 100, 0), up])[0]
    else {
        panic!("not ejected");
    };
    assert_eq!(
        (state.times, state.until_ms, reason),
        (1, 1_095_000, Reason::Latency)
    );
    // A fast window after readmission forgives the backoff.
    let mut healed = slow(50, 40, 0);
    healed.ejection = Ejection {
        times: 2,
        ..up.ejection
    };
    assert!(matches!(
        g.decide(1_040_000, &[slow(50, 1, 0), healed])[..],
        [Change::Forgive { upstream: 1, .. }]
    ));
}

#[test]
fn an_abandoned_request_counts_only_once_it_waited_long_enough() {
    let g = Guard {
        latency: Some(Latency {
            percentile_milli: 90_000,
            threshold_ms: 200,
        }),
        ..guard()
    };
    let judge = |ms| g.judge(Outcome::Abandoned, ms);
    // A client that gives up quickly, before a healthy answer, says nothing about the upstream.
    assert_eq!(judge(Some(20)), None);
    assert_eq!(judge(Some(200)), None);
    // Past the latency threshold it was slow; from abandoned_after_ms (500) it failed.
    assert_eq!(
        judge(Some(201)),
        Some(Verdict {
            failed: false,
            slow: true
        })
    );
    assert_eq!(
        judge(Some(500)),
        Some(Verdict {
            failed: true,
            slow: true
        })
    );
    // Not timed: nothing to judge by.
    assert_eq!(judge(None), None);
    // An error guard alone counts the hang as a failure; with abandoned_after_ms 0 it does not.
    let errors_only = guard();
    assert!(errors_only.times_streams());
    assert_eq!(errors_only.judge(Outcome::Abandoned, Some(499)), None);
    assert_eq!(
        errors_only.judge(Outcome::Abandoned, Some(2_000)),
        Some(Verdict {
            failed: true,
            slow: false
        })
    );
    let off = Guard {
        abandoned_after_ms: 0,
        ..guard()
    };
    assert!(!off.times_streams());
    assert_eq!(off.judge(Outcome::Abandoned, Some(60_000)), None);
    // A latency guard without error_rate counts a long wait as slow, never as a failure.
    let latency_only = Guard {
        error_rate: None,
        ..g.clone()
    };
    assert_eq!(
        latency_only.judge(Outcome::Abandoned, Some(60_000)),
        Some(Verdict {
            failed: false,
            slow: true
        })
    );
    // An answered request is judged by its status, however long it took.
    assert_eq!(
        g.judge(Outcome::Status(200), Some(20)),
        Some(Verdict::default())
    );
}

#[test]
fn sampled_windows_eject_only_on_evidence_read() {
    // The Wilson bound: 1 failure of 30 read is no evidence of a rate above 5 %; 25 of 100 is.
    assert!(!evident(1, 30, 0.05));
    assert!(!evident(3, 30, 0.05));
    assert!(evident(25, 100, 0.05));
    assert!(!evident(0, 0, 0.05));
    // An estimate of 16 failures of 100 from one sampled failure ejects nothing.
    let mut up = seen(50, 100, 16);
    up.read = Read {
        requests: 28,
        failures: 1,
        slow: 0,
    };
    let g = Guard {
        error_rate: Some(0.05),
        ..guard()
    };
    assert_eq!(g.decide(1_000_000, &[seen(50, 100, 0), up]), []);
    // The same estimate from outcomes that show it is ejected.
    up.read = Read {
        requests: 100,
        failures: 16,
        slow: 0,
    };
    assert_eq!(ejected(&g.decide(1_000_000, &[seen(50, 200, 0), up])), [1]);
}

#[test]
fn grpc_calls_are_judged_by_their_grpc_status() {
    let g = guard();
    // UNAVAILABLE in an HTTP 200 fails; OK and what a client provokes (INVALID_ARGUMENT,
    // NOT_FOUND) do not.
    let failed = |grpc| {
        g.judge(grpc_outcome(Some(200), Some(0), grpc), None)
            .map(|v| v.failed)
    };
    assert_eq!(failed(Some(14)), Some(true));
    for code in [2, 13, 15] {
        assert_eq!(failed(Some(code)), Some(true), "{code}");
    }
    // DEADLINE_EXCEEDED (4) too: a client sets its deadline.
    for code in [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16] {
        assert_eq!(failed(Some(code)), Some(false), "{code}");
    }
    // Not a gRPC call: the HTTP status decides.
    assert_eq!(failed(None), Some(false));
    // An upstream failure stays one; a 503 is judged by the HTTP codes.
    assert_eq!(
        grpc_outcome(Some(503), Some(0x20), Some(14)),
        Outcome::UpstreamFailure
    );
    assert_eq!(
        grpc_outcome(Some(503), Some(0), Some(14)),
        Outcome::Status(503)
    );
    let only_internal = Guard {
        grpc_failure_codes: vec![13],
        ..guard()
    };
    assert!(only_internal.failed(Outcome::Grpc(13)) && !only_internal.failed(Outcome::Grpc(14)));
}

#[test]
fn relative_latency_ejects_only_a_version_slower_than_the_rest() {
    let g = Guard {
        error_rate: None,
        latency: Some(Latency {
            percentile_milli: 90_000,
            threshold_ms: 250,
        }),
        latency_relative_margin: Some(0.1),
        ..guard()
    };
    // Both hold 15 % of their requests (long polls): p90 above the threshold on both, alike.
    assert_eq!(
        g.decide(1_000_000, &[slow(50, 100, 15), slow(50, 100, 15)]),
        []
    );
    // Without the relative mode both would be candidates, and one ejected.
    let absolute = Guard {
        latency_relative_margin: None,
        ..g.clone()
    };
    assert_eq!(
        ejected(&absolute.decide(1_000_000, &[slow(50, 100, 15), slow(50, 100, 15)])),
        [0]
    );
    // A version clearly slower than the rest is still ejected.
    assert_eq!(
        ejected(&g.decide(1_000_000, &[slow(50, 100, 15), slow(50, 100, 60)])),
        [1]
    );
}

#[test]
fn an_upgraded_stream_is_never_slow() {
    let g = Guard {
        latency: Some(Latency {
            percentile_milli: 90_000,
            threshold_ms: 250,
        }),
        ..guard()
    };
    assert_eq!(
        g.judge(Outcome::Status(101), Some(60_000)),
        Some(Verdict::default())
    );
    assert_eq!(
        g.judge(Outcome::Status(200), Some(60_000)),
        Some(Verdict {
            failed: false,
            slow: true
        })
    );
}

#[test]
fn counts_of_a_slice_older_than_the_buckets_are_dropped_not_filed_over_it() {
    // A tick that files an outcome stamped long ago must not wipe a newer slice held there.
    let newer = Bucket::default().add(101, counts(50, 0, 0));
    assert_eq!(newer.add(91, counts(1, 1, 0)), newer);
    assert_eq!(newer.add(101, counts(1, 1, 0)).counts, counts(51, 1, 0));
    assert_eq!(newer.add(111, counts(1, 1, 0)).counts, counts(1, 1, 0));
}
