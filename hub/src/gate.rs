//! What a connection does while the server starts [SG-2, SG-3], and which `goaway` a connection
//! sends when the store cannot take what it must know first: rules of the server that are not
//! the protocol session's, on [`Time`] like the rest of the core.

use std::time::Duration;

use readyws_protocol::Time;
use readyws_protocol::close::code;

/// A `goaway` the driver sends: code, reason, and the wait it asks of the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Goaway {
    /// The close code (`docs/PROTOCOL.md` §11).
    pub code: u16,
    /// Why, for people.
    pub reason: &'static str,
    /// `retry_after_ms`.
    pub retry_after: Option<Duration>,
}

/// One connection's wait for the server's start-up: a `hello` that arrives while the server is
/// starting waits [SG-2] until start-up completes, or until the connection has waited its
/// start-up wait since the socket opened, when the connection is told to come back [SG-3].
#[derive(Clone, Debug)]
pub struct StartupGate {
    gives_up_at: Time,
    retry_after: Duration,
    waiting: bool,
}

/// What the gate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Attach the connection now.
    Proceed,
    /// Keep the connection open, answering pings, until [`StartupGate::poll_timeout`] or start-up.
    Wait,
    /// Send this `goaway` (4002 with `retry_after_ms`) and close [SG-3].
    GiveUp(Goaway),
    /// Nothing to do.
    Idle,
}

impl StartupGate {
    /// The gate of a connection whose socket opened at `opened`: it waits at most `max_wait`,
    /// then asks the client to come back after `retry_after`.
    pub fn new(opened: Time, max_wait: Duration, retry_after: Duration) -> Self {
        StartupGate {
            gives_up_at: opened + max_wait,
            retry_after,
            waiting: false,
        }
    }

    /// The connection's `hello` was accepted at `now`, with the server `started` or not.
    pub fn handle_hello(&mut self, started: bool, now: Time) -> Gate {
        if started {
            return Gate::Proceed;
        }
        self.waiting = true;
        self.handle_timeout(now)
    }

    /// Start-up completed: a waiting connection attaches now [SG-2].
    pub fn handle_started(&mut self) -> Gate {
        if std::mem::take(&mut self.waiting) {
            Gate::Proceed
        } else {
            Gate::Idle
        }
    }

    /// Time passed: a connection that has waited its start-up wait gives up [SG-3].
    pub fn handle_timeout(&mut self, now: Time) -> Gate {
        if !self.waiting {
            return Gate::Idle;
        }
        if now >= self.gives_up_at {
            self.waiting = false;
            return Gate::GiveUp(Goaway {
                code: code::STARTUP_FAILED,
                reason: "server start-up did not finish in time",
                retry_after: Some(self.retry_after),
            });
        }
        Gate::Wait
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.waiting.then_some(self.gives_up_at)
    }

    /// Whether a `hello` waits for start-up.
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }
}

/// Why a connection could not tell the store what its next frames depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreTrouble {
    /// The store failed through its retries.
    Unavailable,
    /// Another connection carries the session now (this instance was thought dead, or a later
    /// `hello` claimed it).
    Fenced,
    /// The session stayed live on another connection past the takeover deadline [RS-7].
    Busy,
}

/// The `goaway` for `trouble`: 4003 with a short wait in every case, since the client must
/// come back and resume (4203, which a client takes as final, would strand one whose own
/// connection was fenced). Nothing was lost: what the store did not take is still with the
/// client or in the record.
pub fn goaway_for(trouble: StoreTrouble) -> Goaway {
    let (reason, retry_after) = match trouble {
        StoreTrouble::Unavailable => (
            "the session store is unavailable, retry",
            Duration::from_secs(1),
        ),
        StoreTrouble::Fenced => (
            "this connection no longer carries the session, reconnect",
            Duration::from_millis(100),
        ),
        StoreTrouble::Busy => ("session busy, retry", Duration::from_millis(500)),
    };
    Goaway {
        code: code::OVERLOADED,
        reason,
        retry_after: Some(retry_after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    /// [SG-2] A `hello` while the server starts waits, and attaches once start-up completes.
    #[test]
    fn a_hello_waits_for_start_up_and_attaches_when_it_completes() {
        let mut gate = StartupGate::new(at(0), Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(gate.handle_hello(false, at(10)), Gate::Wait);
        assert_eq!(gate.poll_timeout(), Some(at(30_000)));
        assert_eq!(gate.handle_timeout(at(29_999)), Gate::Wait);
        assert_eq!(gate.handle_started(), Gate::Proceed);
        assert_eq!(gate.poll_timeout(), None);
        assert_eq!(gate.handle_started(), Gate::Idle, "once");
        let mut started = StartupGate::new(at(0), Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(started.handle_hello(true, at(10)), Gate::Proceed);
    }

    /// [SG-3] A connection that waited its start-up wait since the socket opened gets 4002
    /// with `retry_after_ms`, once; a `hello` that comes after that wait gets it at once.
    #[test]
    fn a_connection_that_waited_too_long_is_told_to_come_back() {
        let mut gate =
            StartupGate::new(at(100), Duration::from_millis(500), Duration::from_secs(5));
        assert_eq!(gate.handle_hello(false, at(200)), Gate::Wait);
        let expected = Gate::GiveUp(Goaway {
            code: code::STARTUP_FAILED,
            reason: "server start-up did not finish in time",
            retry_after: Some(Duration::from_secs(5)),
        });
        assert_eq!(gate.handle_timeout(at(600)), expected);
        assert_eq!(gate.handle_timeout(at(700)), Gate::Idle);
        assert_eq!(
            gate.handle_started(),
            Gate::Idle,
            "no attach after giving up"
        );
        let mut late = StartupGate::new(at(0), Duration::from_millis(500), Duration::from_secs(5));
        assert_eq!(late.handle_hello(false, at(800)), expected);
    }

    /// Every store trouble asks the client to come back soon (4003), never to give up.
    #[test]
    fn store_trouble_asks_the_client_to_come_back() {
        for trouble in [
            StoreTrouble::Unavailable,
            StoreTrouble::Fenced,
            StoreTrouble::Busy,
        ] {
            let goaway = goaway_for(trouble);
            assert_eq!(goaway.code, code::OVERLOADED, "{trouble:?}");
            assert!(goaway.retry_after.is_some(), "{trouble:?}");
        }
    }
}
