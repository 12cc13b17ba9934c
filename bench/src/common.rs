//! What both sides of every measurement share: the message, the raw baseline's frames, the
//! process figures.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpSocket};

/// The size of every benchmark message's JSON, in bytes.
pub(crate) const MESSAGE_BYTES: usize = 1024;

/// The `bench` member of the message the readyws bench server publishes in place of the rest
/// when a publish fails: `{"bench":"failed","reason":…}`.
pub(crate) const BENCH_FAILED: &str = "failed";

/// Padding, made once: building it per message would weigh on both sides of every comparison.
static FILLER: LazyLock<String> = LazyLock::new(|| "x".repeat(MESSAGE_BYTES));

/// A JSON object of exactly [`MESSAGE_BYTES`] bytes: `{"seq":N,"text":"xxx…"}`.
pub(crate) fn payload(seq: u64) -> String {
    let head = format!(r#"{{"seq":{seq},"text":""#);
    let padding = MESSAGE_BYTES.saturating_sub(head.len() + 2);
    let mut json = String::with_capacity(MESSAGE_BYTES);
    json.push_str(&head);
    json.push_str(&FILLER[..padding.min(FILLER.len())]);
    json.push_str("\"}");
    json
}

/// A frame of the raw baseline, parsed the way a server that does not trust its input must:
/// every byte of `data` is checked to be JSON, and kept as text, as the readyws codec does.
#[derive(Debug, Deserialize)]
pub(crate) struct RawFrame<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    #[serde(default)]
    pub(crate) id: u64,
    #[serde(default, borrow)]
    #[allow(
        dead_code,
        reason = "parsed to validate it; the baseline does not use it"
    )]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(default)]
    pub(crate) count: u64,
}

/// `{"type":"msg","id":N,"data":…}`, the frame readyws itself sends.
pub(crate) fn raw_msg(id: u64, data: &str) -> String {
    format!(r#"{{"type":"msg","id":{id},"data":{data}}}"#)
}

/// `{"type":"ack","id":N}`.
pub(crate) fn raw_ack(id: u64) -> String {
    format!(r#"{{"type":"ack","id":{id}}}"#)
}

/// A loopback listener on a free port whose accept queue holds a burst of 4,096 connections (the
/// kernel's default `somaxconn`), so that 10,000 clients opening at once are not turned away by a
/// short queue on either side of the comparison.
pub(crate) fn listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

/// Raises this process's open-file limit to its hard limit: 10,000 sockets need as many files.
/// Fails, saying what to do, when even the hard limit leaves fewer than `needed`.
pub(crate) fn raise_open_file_limit(needed: u64) -> Result<u64, String> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|error| format!("cannot raise the open-file limit: {error}"))?;
    if limit < needed {
        return Err(format!(
            "the open-file limit is {limit} even raised to its hard limit, below the {needed} this \
             run needs: raise the hard limit (`ulimit -Hn`, or `LimitNOFILE=` for a service) or \
             pass a smaller --sessions"
        ));
    }
    Ok(limit)
}

/// The resident memory of process `pid` (`self` for this one), in bytes, from `/proc`.
pub(crate) fn resident_bytes(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The median of `samples`.
pub(crate) fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// The median of `values`.
pub(crate) fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// User plus system CPU time of process `pid` (`self` for this one), all its threads, from
/// `/proc/<pid>/stat` (in clock ticks of [`clock_ticks_per_second`]).
pub(crate) fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    Duration::from_secs_f64(cpu_ticks(&stat) as f64 / clock_ticks_per_second() as f64)
}

/// Fields 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line, summed; 0 if it has none.
fn cpu_ticks(stat: &str) -> u64 {
    // The command name, field 2, is in parentheses and may hold spaces and parentheses: count
    // from after the last `)`.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| {
        // Field 3 (the state) is the first after the name.
        fields
            .get(number - 3)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// The unit of `/proc`'s CPU times (`getconf CLK_TCK`; 100 on Linux unless it says otherwise).
pub(crate) fn clock_ticks_per_second() -> u64 {
    static TICKS: LazyLock<u64> = LazyLock::new(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100)
    });
    *TICKS
}

/// The lowest, middle and highest of a figure's runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Spread {
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// The spread of `values` (all zero for none).
    pub(crate) fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Spread {
            min: sorted.first().copied().unwrap_or(0.0),
            median: median_f64(&sorted),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU fields are found after a command name that holds spaces and parentheses.
    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (node (a) b) S 1 4242 4242 0 -1 4194304 5000 0 12 0 731 129 0 0 20 0 \
                    11 0 9000 1000000 5000";
        assert_eq!(cpu_ticks(stat), 731 + 129);
        assert_eq!(cpu_ticks(""), 0);
        assert_eq!(cpu_ticks("1 (short) S 1"), 0);
    }

    /// The spread of a figure's runs: its ends and its middle.
    #[test]
    fn a_spread_is_the_lowest_middle_and_highest_run() {
        let spread = Spread::of(&[3.0, 1.0, 5.0, 2.0, 4.0]);
        assert_eq!(
            spread,
            Spread {
                min: 1.0,
                median: 3.0,
                max: 5.0
            }
        );
        assert_eq!(Spread::of(&[]), Spread::default());
    }
}
