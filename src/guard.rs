//! The error-rate guard: moves traffic away from an upstream whose responses fail, and back
//! when it recovers. Pure arithmetic here; `instance.rs` feeds it on the housekeeping tick
//! with counts aggregated across all workers.
//!
//! Each upstream's outcomes are kept in [`WINDOW_SLICES`] buckets (requests, failures) that
//! together span the window. An admitted
//! upstream whose failures over the last `window_s` seconds exceed `error_rate` of at least
//! `min_requests` requests is ejected for `eject_s`, doubled each time it fails again right
//! after a readmission (at most 2^[`MAX_BACKOFF`] times). Only outcomes since its last
//! readmission count, so old failures never eject it again. Never more than
//! `max_ejected_percent` of the service's weight is ejected, and never the last upstream
//! with weight.
//!
//! What fails: a stream Envoy flags as an upstream failure (connection failure or termination,
//! reset, timeout, overflow, no healthy host), or a response whose status is one of
//! `failure_codes` (500, 502, 503, 504 by default: what says the upstream is unhealthy or the
//! version is bad, not what a client can provoke, such as 501 or 505). In relative mode
//! (`relative_margin`) an upstream is also compared with the service's other admitted
//! upstreams, as canary analysis compares canary and baseline: it is ejected only when its
//! failure rate exceeds theirs by the margin, so traffic that fails on every version ejects
//! nothing.
//!
//! A latency guard (`latency`) ejects the same way an upstream whose requests got slow: the
//! `percentile`-th percentile of the time from a request's headers reaching meshsplit to its
//! response headers (where the host shows them; to the end of its stream where it does not),
//! over the same window and `min_requests`, above `threshold_ms`. The
//! decision is exact without a histogram: the P-th percentile (nearest rank) of n durations is
//! above T exactly when more than (100 - P) % of them are above T, so each slice counts the
//! requests slower than the threshold beside the failures, and the guard compares that share
//! with 100 - P. Durations are whole milliseconds of the monotonic clock (a request counts as
//! slow when its duration, to the millisecond, exceeds `threshold_ms`).

/// Most doublings of `eject_s` for an upstream that keeps failing.
pub const MAX_BACKOFF: u32 = 5;

/// A compiled `guard`.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// Eject above this share of failures (`None`: failures never eject).
    pub error_rate: Option<f64>,
    pub min_requests: u64,
    pub window_s: u64,
    pub eject_s: u64,
    pub max_ejected_percent: u64,
    /// Response statuses that count as failures (sorted, no duplicates).
    pub failure_codes: Vec<u16>,
    /// Relative mode: eject only above the other admitted upstreams' failure rate plus this.
    pub relative_margin: Option<f64>,
    /// Eject when a percentile of the requests' durations is above a threshold.
    pub latency: Option<Latency>,
    /// A request the client abandoned with no response after waiting at least this many
    /// milliseconds counts as a failure (0: abandoned requests never count as failures).
    pub abandoned_after_ms: u64,
    /// gRPC statuses (`grpc-status`) that count as failures (sorted, no duplicates).
    pub grpc_failure_codes: Vec<u16>,
    /// Relative latency: eject for latency only when an upstream's share of slow requests
    /// exceeds the other admitted upstreams' by more than this.
    pub latency_relative_margin: Option<f64>,
}

/// A compiled `guard.latency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// The percentile, in thousandths (95 is 95 000, 99.9 is 99 900).
    pub percentile_milli: u64,
    pub threshold_ms: u64,
}

impl Latency {
    /// Whether a request that took `elapsed_ms` counts as slow.
    pub fn slow(&self, elapsed_ms: u64) -> bool {
        elapsed_ms > self.threshold_ms
    }

    /// The share of slow requests the percentile allows: (100 - P) %.
    pub fn allowed_share(&self) -> f64 {
        100_000u64.saturating_sub(self.percentile_milli) as f64 / 100_000.0
    }

    /// Whether the percentile of `requests` durations, `slow` of them slow, is above the
    /// threshold: more than (100 - P) % of them are slow (exact integer arithmetic).
    pub fn exceeded(&self, requests: u64, slow: u64) -> bool {
        let allowed_milli = 100_000u64.saturating_sub(self.percentile_milli);
        u128::from(slow) * 100_000 > u128::from(requests) * u128::from(allowed_milli)
    }
}

/// Why an upstream was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its share of failures was above `error_rate`.
    Errors,
    /// Its latency percentile was above `threshold_ms`.
    Latency,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Errors => "errors",
            Reason::Latency => "latency",
        }
    }
}

impl Guard {
    /// Statuses that count as failures unless `failure_codes` says otherwise.
    pub const DEFAULT_FAILURE_CODES: [u16; 4] = [500, 502, 503, 504];
    pub const DEFAULT_MIN_REQUESTS: u64 = 20;
    pub const DEFAULT_WINDOW_S: u64 = 10;
    pub const DEFAULT_EJECT_S: u64 = 30;
    pub const DEFAULT_MAX_EJECTED_PERCENT: u64 = 50;
    pub const DEFAULT_ABANDONED_AFTER_MS: u64 = 500;
    /// gRPC statuses that count as failures unless `grpc_failure_codes` says otherwise: what
    /// says the server is unhealthy or broken, UNKNOWN (2), INTERNAL (13), UNAVAILABLE (14)
    /// and DATA_LOSS (15); not what a client provokes at will (INVALID_ARGUMENT, NOT_FOUND,
    /// ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION, OUT_OF_RANGE,
    /// and DEADLINE_EXCEEDED: a client sets its deadline in `grpc-timeout`, and a server
    /// answers a tiny one at once) nor what a server answers by design (CANCELLED,
    /// RESOURCE_EXHAUSTED, ABORTED, UNIMPLEMENTED).
    pub const DEFAULT_GRPC_FAILURE_CODES: [u16; 4] = [2, 13, 14, 15];
}

/// A window is counted in this many slices of `window_s / WINDOW_SLICES` each, so a tick reads
/// the same amount of state whatever `window_s` is (from 1 s to an hour).
pub const WINDOW_SLICES: usize = 10;

/// Length of one slice of a `window_s` window, in milliseconds (at least 100).
pub fn slice_ms(window_s: u64) -> u64 {
    (window_s.saturating_mul(1000) / WINDOW_SLICES as u64).max(1)
}

/// Outcomes of some requests: how many, how many failed, how many were slower than the
/// latency guard's threshold (0 without a latency guard). With sampling these are estimates
/// (each sampled outcome counted for the streams it stands for) and `read` holds the outcomes
/// actually read, which the guard's evidence bound judges ([`Evidence`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub failures: u64,
    pub slow: u64,
    pub read: Read,
}

/// The outcomes actually read: the same as the estimate when nothing was sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Read {
    pub requests: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Read {
    pub fn plus(self, other: Read) -> Read {
        Read {
            requests: self.requests.saturating_add(other.requests),
            failures: self.failures.saturating_add(other.failures),
            slow: self.slow.saturating_add(other.slow),
        }
    }
}

impl Counts {
    /// Exact counts: every outcome read.
    pub fn exact(requests: u64, failures: u64, slow: u64) -> Counts {
        Counts {
            requests,
            failures,
            slow,
            read: Read {
                requests,
                failures,
                slow,
            },
        }
    }

    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_add(other.requests),
            failures: self.failures.saturating_add(other.failures),
            slow: self.slow.saturating_add(other.slow),
            read: self.read.plus(other.read),
        }
    }
}

/// One-sided z of the evidence bound for sampled windows: 3 standard errors (a healthy upstream
/// passes it by chance about once in 740 independent windows at the limit itself, far less
/// below it).
pub const EVIDENCE_Z: f64 = 3.0;

/// Whether `k` of `n` outcomes read show a share above `limit` beyond chance: the Wilson score
/// interval's lower bound at [`EVIDENCE_Z`] is above it. Without sampling every outcome is
/// read and the plain share decides; with sampling one read outcome stands for many streams,
/// so a decision must rest on enough outcomes actually read.
pub fn evident(k: u64, n: u64, limit: f64) -> bool {
    if n == 0 {
        return false;
    }
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = EVIDENCE_Z * EVIDENCE_Z;
    let centre = p + z2 / (2.0 * n);
    let spread = EVIDENCE_Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    (centre - spread) / (1.0 + z2 / n) > limit
}

/// Outcomes of one upstream in one slice: `slice` is the slice's number on the monotonic
/// clock (monotonic milliseconds divided by the slice length).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub slice: u64,
    pub counts: Counts,
}

impl Bucket {
    /// This bucket with `counts` of slice `slice` added (a bucket holding an older slice starts
    /// afresh; counts of a slice older than the bucket's are out of its window, and dropped).
    pub fn add(self, slice: u64, counts: Counts) -> Self {
        if slice < self.slice {
            return self;
        }
        let base = if self.slice == slice {
            self.counts
        } else {
            Counts::default()
        };
        Bucket {
            slice,
            counts: base.plus(counts),
        }
    }
}

/// Sum of the buckets of the last [`WINDOW_SLICES`] slices up to `now_slice`, counting only
/// slices from `since_slice` on.
pub fn window_totals(buckets: &[Bucket], now_slice: u64, since_slice: u64) -> Counts {
    let first = now_slice
        .saturating_sub(WINDOW_SLICES as u64 - 1)
        .max(since_slice);
    buckets
        .iter()
        .filter(|b| b.slice >= first && b.slice <= now_slice)
        .fold(Counts::default(), |sum, b| sum.plus(b.counts))
}

/// Ejection state of one upstream, shared by all workers. Times are milliseconds of the
/// monotonic clock (shared by every worker of one Envoy, and never stepped), so a change of the
/// wall clock neither lengthens nor shortens an ejection, and an ejection lasts `eject_s` to the
/// tick; `since_wall_s` only tells a rollout which of its steps was in force when the ejection
/// began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ejection {
    /// When the current or last ejection started (monotonic ms; 0: never ejected).
    pub since_ms: u64,
    /// Until when it is (or was) ejected; outcomes count again from then on.
    pub until_ms: u64,
    /// Ejections in a row without a healthy window in between.
    pub times: u32,
    /// Whether its readmission after the last ejection was reported.
    pub readmission_reported: bool,
    /// The wall clock (Unix seconds) when the current or last ejection started.
    pub since_wall_s: u64,
}

impl Ejection {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms
    }
}

/// What the guard sees of one upstream on a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The upstream's weight before the guard (configured, or the rollout's).
    pub weight: u32,
    pub requests: u64,
    pub failures: u64,
    /// Requests slower than the latency guard's threshold.
    pub slow: u64,
    /// The outcomes actually read (the same as the three above without sampling).
    pub read: Read,
    pub ejection: Ejection,
}

/// A change of one upstream's ejection state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Eject upstream `upstream` (its new state) for `reason`, having seen `rate` (of failures,
    /// or of slow requests) over `requests`.
    Eject {
        upstream: usize,
        state: Ejection,
        reason: Reason,
        rate: f64,
        requests: u64,
    },
    /// Upstream `upstream` is back; report it once.
    Readmit { upstream: usize, state: Ejection },
    /// A healthy window after a readmission: forget the backoff.
    Forgive { upstream: usize, state: Ejection },
}

impl Guard {
    /// The changes to make at `now_ms` (monotonic), given every upstream's window totals
    /// (counted from its last readmission) and state.
    pub fn decide(&self, now_ms: u64, upstreams: &[Seen]) -> Vec<Change> {
        let window_ms = self.window_s.saturating_mul(1000);
        let mut changes = Vec::new();
        let total: u64 = upstreams.iter().map(|u| u64::from(u.weight)).sum();
        let mut ejected_weight: u64 = upstreams
            .iter()
            .filter(|u| u.ejection.is_ejected(now_ms))
            .map(|u| u64::from(u.weight))
            .sum();
        let mut admitted_with_weight = upstreams
            .iter()
            .filter(|u| u.weight > 0 && !u.ejection.is_ejected(now_ms))
            .count();
        // The admitted upstreams' combined counts: in relative mode each is compared with the
        // others' (these minus its own).
        let (admitted_requests, admitted_failures, admitted_slow) = upstreams
            .iter()
            .filter(|u| !u.ejection.is_ejected(now_ms))
            .fold((0u64, 0u64, 0u64), |(r, f, s), u| {
                (
                    r.saturating_add(u.requests),
                    f.saturating_add(u.failures),
                    s.saturating_add(u.slow),
                )
            });
        // Worst first, so the cap ejects the upstreams that fail most (errors and latency
        // ranked together by their share of failed or slow requests).
        let mut failing: Vec<(usize, f64, u64, Reason)> = Vec::new();
        for (index, u) in upstreams.iter().enumerate() {
            let ejection = u.ejection;
            if ejection.is_ejected(now_ms) {
                continue;
            }
            if ejection.until_ms > 0 && !ejection.readmission_reported {
                changes.push(Change::Readmit {
                    upstream: index,
                    state: Ejection {
                        readmission_reported: true,
                        ..ejection
                    },
                });
            }
            let share = |n: u64| {
                if u.requests == 0 {
                    0.0
                } else {
                    n as f64 / u.requests as f64
                }
            };
            let rate = share(u.failures);
            // In relative mode a share (of failures, or of slow requests) counts only when it
            // exceeds the other admitted upstreams' by the margin; without enough traffic
            // elsewhere there is nothing to compare with.
            let others = admitted_requests.saturating_sub(u.requests);
            let worse = |margin: Option<f64>, own: u64, admitted: u64| match margin {
                None => true,
                Some(margin) => {
                    let theirs = admitted.saturating_sub(own);
                    others >= self.min_requests
                        && share(own) > theirs as f64 / others as f64 + margin
                }
            };
            let worse_than_others = worse(self.relative_margin, u.failures, admitted_failures);
            let slower_than_others = worse(self.latency_relative_margin, u.slow, admitted_slow);
            let enough = u.requests >= self.min_requests;
            // With sampling (fewer outcomes read than estimated) the outcomes read must show
            // the excess beyond chance ([`evident`]); without, every outcome was read.
            let sampled = u.read.requests < u.requests;
            let shown = |k: u64, limit: f64| !sampled || evident(k, u.read.requests, limit);
            let errors = self.error_rate.is_some_and(|limit| {
                enough && rate > limit && worse_than_others && shown(u.read.failures, limit)
            });
            let slow = self.latency.is_some_and(|l| {
                enough
                    && l.exceeded(u.requests, u.slow)
                    && slower_than_others
                    && shown(u.read.slow, l.allowed_share())
            });
            if errors {
                failing.push((index, rate, u.requests, Reason::Errors));
            } else if slow {
                failing.push((index, share(u.slow), u.requests, Reason::Latency));
            } else if ejection.times > 0
                && now_ms >= ejection.until_ms.saturating_add(window_ms)
                && u.requests >= self.min_requests
            {
                changes.push(Change::Forgive {
                    upstream: index,
                    state: Ejection {
                        times: 0,
                        readmission_reported: true,
                        ..ejection
                    },
                });
            }
        }
        // Worst first (a few upstreams: a selection, not a sort, keeps the module small).
        while let Some(worst) = (0..failing.len()).max_by(|&a, &b| {
            let key = |i: usize| failing.get(i).map_or((0.0, usize::MAX), |f| (f.1, f.0));
            let ((rate_a, up_a), (rate_b, up_b)) = (key(a), key(b));
            // Higher rate first; on a tie, the lower upstream index.
            rate_a.total_cmp(&rate_b).then(up_b.cmp(&up_a))
        }) {
            let (index, rate, requests, reason) = failing.swap_remove(worst);
            let Some(u) = upstreams.get(index) else {
                continue;
            };
            let weight = u64::from(u.weight);
            let within_cap =
                (ejected_weight + weight) * 100 <= self.max_ejected_percent.saturating_mul(total);
            let leaves_one = u.weight == 0 || admitted_with_weight > 1;
            if !within_cap || !leaves_one {
                continue;
            }
            // Failing again within a window of its readmission: back off further.
            let again =
                u.ejection.until_ms > 0 && now_ms < u.ejection.until_ms.saturating_add(window_ms);
            let times = if again {
                (u.ejection.times + 1).min(MAX_BACKOFF)
            } else {
                0
            };
            let duration_ms = self.eject_s.saturating_mul(1000).saturating_mul(1 << times);
            ejected_weight += weight;
            if u.weight > 0 {
                admitted_with_weight -= 1;
            }
            changes
                .retain(|c| !matches!(c, Change::Readmit { upstream, .. } if *upstream == index));
            changes.push(Change::Eject {
                upstream: index,
                state: Ejection {
                    since_ms: now_ms,
                    until_ms: now_ms.saturating_add(duration_ms),
                    times,
                    readmission_reported: false,
                    since_wall_s: 0,
                },
                reason,
                rate,
                requests,
            });
        }
        changes
    }
}

/// `weights` with every ejected upstream set to 0: their share goes to the others in
/// proportion to their weights.
pub fn admitted_weights(weights: &[u32], states: &[Ejection], now_ms: u64) -> Vec<u32> {
    weights
        .iter()
        .zip(states.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(&w, state)| {
            if state.is_some_and(|s| s.is_ejected(now_ms)) {
                0
            } else {
                w
            }
        })
        .collect()
}

/// Envoy's response flags that blame the upstream: no healthy upstream (UH), upstream request
/// timeout (UT), upstream reset (UR), connection failure (UF), connection termination (UC),
/// overflow (UO).
pub const UPSTREAM_FAILURE_FLAGS: u64 = 0x2 | 0x4 | 0x10 | 0x20 | 0x40 | 0x80;

/// What a finished stream says, before a guard judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Envoy flagged an upstream failure (it may have answered 503 or 504 itself).
    UpstreamFailure,
    /// The upstream answered with this status.
    Status(u16),
    /// A gRPC call the upstream answered (HTTP 200) with this `grpc-status` (in its trailers,
    /// or in its headers for a trailers-only response).
    Grpc(u16),
    /// No response at all and nothing that blames the upstream: the client went away (reset,
    /// timed out, closed) before the response headers.
    Abandoned,
}

/// Whether a stream's flags must be read: without a status, or with a 5xx one (Envoy's own
/// answers to upstream failures are 5xx), or for a failed gRPC call (`grpc_status` not OK in an
/// HTTP 200: Envoy answers a gRPC call it cannot forward that way); any other 2xx-4xx needs no
/// more property reads.
pub fn needs_flags(status: Option<u64>, grpc_status: Option<u64>) -> bool {
    let failed_grpc = status == Some(200) && grpc_status.is_some_and(|g| g != 0);
    failed_grpc || !matches!(status, Some(code) if (1..500).contains(&code))
}

/// A `grpc-status` value (decimal), as a response header or trailer carries it.
pub fn parse_grpc_status(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// What a finished stream says (`flags` read as [`needs_flags`] says).
pub fn outcome(status: Option<u64>, flags: Option<u64>) -> Outcome {
    if flags.is_some_and(|f| f & UPSTREAM_FAILURE_FLAGS != 0) {
        return Outcome::UpstreamFailure;
    }
    match status {
        Some(code) if code > 0 => Outcome::Status(u16::try_from(code).unwrap_or(u16::MAX)),
        _ => Outcome::Abandoned,
    }
}

/// [`outcome`] of a gRPC call: an HTTP 200 with a `grpc-status` is judged by that status.
pub fn grpc_outcome(status: Option<u64>, flags: Option<u64>, grpc_status: Option<u64>) -> Outcome {
    match (outcome(status, flags), grpc_status) {
        (Outcome::Status(200), Some(code)) => {
            Outcome::Grpc(u16::try_from(code).unwrap_or(u16::MAX))
        }
        (other, _) => other,
    }
}

/// How a guard counts one stream: whether it failed, whether it was slow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub failed: bool,
    pub slow: bool,
}

impl Guard {
    /// How this guard counts a stream that ended with `outcome` after `elapsed_ms` (`None`: not
    /// timed); `None` when it does not count at all.
    ///
    /// A WebSocket (status 101) is never slow: its stream lasts as long as its session.
    ///
    /// An abandoned request counts only once it waited long enough to say something about the
    /// upstream: as a failure from `abandoned_after_ms`, as slow (with a latency condition)
    /// above `threshold_ms`. A client that gives up sooner, as a quick client timeout does
    /// before a healthy answer, says nothing and counts for nothing.
    pub fn judge(&self, outcome: Outcome, elapsed_ms: Option<u64>) -> Option<Verdict> {
        let slow = match (&self.latency, elapsed_ms) {
            // An upgrade (a WebSocket's 101) lasts as long as its session: never slow.
            (_, _) if outcome == Outcome::Status(101) => false,
            (Some(latency), Some(ms)) => latency.slow(ms),
            _ => false,
        };
        match outcome {
            Outcome::UpstreamFailure => Some(Verdict { failed: true, slow }),
            Outcome::Status(code) => Some(Verdict {
                failed: self.failure_codes.binary_search(&code).is_ok(),
                slow,
            }),
            Outcome::Grpc(code) => Some(Verdict {
                failed: self.grpc_failure_codes.binary_search(&code).is_ok(),
                slow,
            }),
            Outcome::Abandoned => {
                let waited = elapsed_ms?;
                let failed = self.error_rate.is_some()
                    && self.abandoned_after_ms > 0
                    && waited >= self.abandoned_after_ms;
                (failed || slow).then_some(Verdict { failed, slow })
            }
        }
    }

    /// Whether an abandoned request needs timing to count: the guard counts abandoned
    /// requests as failures, or has a latency condition.
    pub fn times_streams(&self) -> bool {
        self.latency.is_some() || (self.error_rate.is_some() && self.abandoned_after_ms > 0)
    }
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
