//! The guard's shared record of one service: every upstream's ejection state and window, in one
//! shared-data value, so that a decision for the service is one compare-and-swap (two workers
//! can never both eject within the caps of two different snapshots), and a tick reads one value
//! per service whatever the window's length.
//!
//! The record also says which configuration may decide: the `generation` of the newest plan of
//! the plugin (see [`claim_generation`]). Plans of older configurations (a filter instance kept
//! alive by long streams or a draining listener) add their outcomes and follow the ejections,
//! but never decide with their old settings.

use crate::guard::{Bucket, Counts, Ejection, Read, WINDOW_SLICES};
use crate::host::{create_shared, Host, SharedWrite};

/// Format of the encoding; a value of another format is read as empty. (3: slices count slow
/// requests too; 4: ejection times in milliseconds, and slices count the outcomes read.)
const FORMAT: u8 = 4;

/// One upstream's part of the record, found by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamRecord {
    pub name: String,
    pub ejection: Ejection,
    /// Ring of slices: the bucket of slice `n` is at `n % WINDOW_SLICES`.
    pub buckets: [Bucket; WINDOW_SLICES],
}

impl UpstreamRecord {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Adds outcomes seen in slice `slice`.
    pub fn add(&mut self, slice: u64, counts: Counts) {
        let at = usize::try_from(slice % WINDOW_SLICES as u64).unwrap_or(0);
        if let Some(bucket) = self.buckets.get_mut(at) {
            *bucket = bucket.add(slice, counts);
        }
    }
}

/// The shared record of one guarded service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The generation of the configuration that decides (0: none yet).
    pub generation: u64,
    /// Length of a window slice (ms) of that configuration's guard.
    pub slice_ms: u64,
    pub upstreams: Vec<UpstreamRecord>,
}

impl Record {
    /// Whether the record holds exactly `names`, in slices of `slice_ms`.
    pub fn matches(&self, slice_ms: u64, names: &[&str]) -> bool {
        self.slice_ms == slice_ms && self.holds(names)
    }

    /// Whether the record's upstreams are `names`, in that order.
    fn holds(&self, names: &[&str]) -> bool {
        self.upstreams.len() == names.len()
            && self.upstreams.iter().zip(names).all(|(u, n)| u.name == *n)
    }

    /// Where each of `names` is in the record: in place when the record holds exactly them (the
    /// newest configuration's plans), else found by name (an older plan's).
    pub fn positions(&self, names: &[&str]) -> Vec<Option<usize>> {
        if self.holds(names) {
            return (0..names.len()).map(Some).collect();
        }
        let index: std::collections::BTreeMap<&str, usize> = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        names.iter().map(|n| index.get(n).copied()).collect()
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamRecord> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// The record as the plan of `generation` keeps it: its upstreams `names` in its order, with
    /// the ejection state of each upstream that was there before (by name), and the windows
    /// kept when the slice length is the same (otherwise they start empty: slices of another
    /// length cannot be added up).
    pub fn claimed(&self, generation: u64, slice_ms: u64, names: &[&str]) -> Record {
        let upstreams = names
            .iter()
            .map(|name| match self.upstream(name) {
                Some(old) if self.slice_ms == slice_ms => old.clone(),
                Some(old) => UpstreamRecord {
                    ejection: old.ejection,
                    ..UpstreamRecord::new(name)
                },
                None => UpstreamRecord::new(name),
            })
            .collect();
        Record {
            generation,
            slice_ms,
            upstreams,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.upstreams.len() * 620);
        out.push(FORMAT);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.slice_ms.to_le_bytes());
        let count = u16::try_from(self.upstreams.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for upstream in self.upstreams.iter().take(usize::from(count)) {
            let name = upstream.name.as_bytes();
            let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(name.get(..usize::from(len)).unwrap_or(name));
            let e = &upstream.ejection;
            out.extend_from_slice(&e.since_ms.to_le_bytes());
            out.extend_from_slice(&e.until_ms.to_le_bytes());
            out.extend_from_slice(&e.times.to_le_bytes());
            out.push(u8::from(e.readmission_reported));
            out.extend_from_slice(&e.since_wall_s.to_le_bytes());
            for b in &upstream.buckets {
                out.extend_from_slice(&b.slice.to_le_bytes());
                out.extend_from_slice(&b.counts.requests.to_le_bytes());
                out.extend_from_slice(&b.counts.failures.to_le_bytes());
                out.extend_from_slice(&b.counts.slow.to_le_bytes());
                let read = &b.counts.read;
                out.extend_from_slice(&read.requests.to_le_bytes());
                out.extend_from_slice(&read.failures.to_le_bytes());
                out.extend_from_slice(&read.slow.to_le_bytes());
            }
        }
        out
    }

    /// The record in `bytes`; an empty record when they are empty, of another format, or cut
    /// short (what was read whole is kept).
    pub fn decode(bytes: &[u8]) -> Record {
        let mut reader = Reader { bytes, at: 0 };
        if reader.u8() != Some(FORMAT) {
            return Record::default();
        }
        let (Some(generation), Some(slice_ms), Some(count)) =
            (reader.u64(), reader.u64(), reader.u16())
        else {
            return Record::default();
        };
        let mut record = Record {
            generation,
            slice_ms,
            upstreams: Vec::with_capacity(usize::from(count)),
        };
        for _ in 0..count {
            match reader.upstream() {
                Some(upstream) => record.upstreams.push(upstream),
                None => break,
            }
        }
        record
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let chunk = self.bytes.get(self.at..self.at.checked_add(N)?)?;
        self.at += N;
        chunk.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn upstream(&mut self) -> Option<UpstreamRecord> {
        let len = usize::from(self.u16()?);
        let name = self.bytes.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        let mut upstream = UpstreamRecord::new(&String::from_utf8_lossy(name));
        upstream.ejection = Ejection {
            since_ms: self.u64()?,
            until_ms: self.u64()?,
            times: self.u32()?,
            readmission_reported: self.u8()? != 0,
            since_wall_s: self.u64()?,
        };
        for bucket in &mut upstream.buckets {
            *bucket = Bucket {
                slice: self.u64()?,
                counts: Counts {
                    requests: self.u64()?,
                    failures: self.u64()?,
                    slow: self.u64()?,
                    read: Read {
                        requests: self.u64()?,
                        failures: self.u64()?,
                        slow: self.u64()?,
                    },
                },
            };
        }
        Some(upstream)
    }
}

/// The shared-data key of a plugin's newest configuration: (generation, fingerprint).
fn generation_key(plugin: &str) -> String {
    format!("meshsplit/generation/{}:{plugin}", plugin.len())
}

/// The generation of configuration `fingerprint` of `plugin`, taken when the configuration is
/// accepted: the current one when the plugin's newest configuration is this one (every worker
/// accepts an update within moments), otherwise the next, which makes this configuration the
/// newest. A configuration applied again after another one (A, B, A) is newer than both.
/// `None` without shared data.
pub fn claim_generation<H: Host + ?Sized>(host: &H, plugin: &str, fingerprint: u64) -> Option<u64> {
    claim_generation_at(host, &generation_key(plugin), fingerprint)
}

/// [`claim_generation`] under shared-data `key`.
pub fn claim_generation_at<H: Host + ?Sized>(host: &H, key: &str, fingerprint: u64) -> Option<u64> {
    for _ in 0..16 {
        let Some((bytes, cas)) = host.shared_data(key) else {
            if !create_shared(host, key, &encode_generation(1, fingerprint)) {
                return None;
            }
            continue;
        };
        let (generation, newest) = decode_generation(&bytes);
        if newest == fingerprint && generation > 0 {
            return Some(generation);
        }
        let next = generation.saturating_add(1);
        match host.set_shared_data(key, &encode_generation(next, fingerprint), cas) {
            SharedWrite::Written => return Some(next),
            SharedWrite::CasMismatch => continue,
            SharedWrite::Failed => return None,
        }
    }
    None
}

fn encode_generation(generation: u64, fingerprint: u64) -> Vec<u8> {
    let mut out = generation.to_le_bytes().to_vec();
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out
}

/// The newest generation claimed under shared-data `key` (`None`: none, or no shared data).
pub fn newest_generation<H: Host + ?Sized>(host: &H, key: &str) -> Option<u64> {
    let (bytes, _) = host.shared_data(key)?;
    Some(decode_generation(&bytes).0)
}

fn decode_generation(bytes: &[u8]) -> (u64, u64) {
    let mut reader = Reader { bytes, at: 0 };
    (reader.u64().unwrap_or(0), reader.u64().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    /// Counts whose outcomes read differ from the estimate, so both round-trip.
    fn counts(requests: u64, failures: u64, slow: u64) -> Counts {
        Counts {
            requests,
            failures,
            slow,
            read: Read {
                requests: requests + 100,
                failures: failures + 200,
                slow: slow + 300,
            },
        }
    }

    fn sample() -> Record {
        let mut record = Record {
            generation: 7,
            slice_ms: 1000,
            upstreams: vec![UpstreamRecord::new("v1"), UpstreamRecord::new("v2")],
        };
        record.upstreams[1].ejection = Ejection {
            since_ms: 5_000,
            until_ms: 35_250,
            times: 2,
            readmission_reported: true,
            since_wall_s: 1_800_000_000,
        };
        record.upstreams[1].add(123, counts(10, 4, 2));
        record.upstreams[1].add(123, counts(1, 1, 1));
        record
    }

    #[test]
    fn a_record_round_trips_and_damage_reads_as_what_was_whole() {
        let record = sample();
        let bytes = record.encode();
        assert_eq!(Record::decode(&bytes), record);
        assert_eq!(Record::decode(b""), Record::default());
        assert_eq!(Record::decode(&[9, 1, 2]), Record::default());
        let cut = Record::decode(&bytes[..bytes.len() - 1]);
        assert_eq!(cut.upstreams, record.upstreams[..1]);
        let b = record.upstreams[1].buckets[3];
        assert_eq!(b.slice, 123);
        assert_eq!(
            (b.counts.requests, b.counts.failures, b.counts.slow),
            (11, 5, 3)
        );
        assert_eq!(
            b.counts.read,
            Read {
                requests: 211,
                failures: 405,
                slow: 603
            }
        );
    }

    #[test]
    fn claiming_keeps_states_by_name_and_windows_only_of_the_same_slice_length() {
        let record = sample();
        let same = record.claimed(8, 1000, &["v2", "v3"]);
        assert_eq!(same.generation, 8);
        assert_eq!(same.upstreams[0], record.upstreams[1]);
        assert_eq!(same.upstreams[1], UpstreamRecord::new("v3"));
        let other = record.claimed(8, 2000, &["v2"]);
        assert_eq!(other.upstreams[0].ejection, record.upstreams[1].ejection);
        assert_eq!(
            other.upstreams[0].buckets,
            [Bucket::default(); WINDOW_SLICES]
        );
    }

    #[test]
    fn a_record_matches_only_its_own_slices_and_upstreams_in_order() {
        let record = sample();
        assert!(record.matches(1000, &["v1", "v2"]));
        // Another slice length: the windows cannot be added up.
        assert!(!record.matches(2000, &["v1", "v2"]));
        // The same upstreams in another order, fewer, more, or another name.
        assert!(!record.matches(1000, &["v2", "v1"]));
        assert!(!record.matches(1000, &["v1"]));
        assert!(!record.matches(1000, &["v1", "v2", "v3"]));
        assert!(!record.matches(1000, &["v1", "v3"]));
        // Positions: in place when the layout is the same, by name otherwise.
        assert_eq!(record.positions(&["v1", "v2"]), [Some(0), Some(1)]);
        assert_eq!(record.positions(&["v2", "v1"]), [Some(1), Some(0)]);
        assert_eq!(record.positions(&["v2", "v9"]), [Some(1), None]);
    }

    #[test]
    fn an_unreadable_generation_is_never_taken_for_a_claim() {
        // A value that decodes as generation 0 (cut short) must not be claimed as generation 0,
        // even by a configuration whose fingerprint decodes the same (0).
        let host = FakeHost::default();
        assert!(create_shared(&host, "meshsplit/generation/1:p", b"\x01"));
        assert_eq!(claim_generation(&host, "p", 0), Some(1));
        assert_eq!(claim_generation(&host, "p", 0), Some(1));
    }

    #[test]
    fn every_worker_of_one_update_gets_one_generation_and_a_config_applied_again_is_newer() {
        let main = FakeHost::default();
        let worker = main.sibling(&[]);
        let a1 = claim_generation(&main, "p", 0xa).unwrap();
        assert_eq!(claim_generation(&worker, "p", 0xa), Some(a1));
        let b = claim_generation(&worker, "p", 0xb).unwrap();
        assert_eq!(claim_generation(&main, "p", 0xb), Some(b));
        assert!(b > a1);
        let a2 = claim_generation(&main, "p", 0xa).unwrap();
        assert!(a2 > b);
        // Another plugin counts apart.
        assert_eq!(claim_generation(&main, "q", 0xb), Some(1));
    }
}
