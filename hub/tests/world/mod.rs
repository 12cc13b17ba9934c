//! The simulated world of `instances_share_custody_through_one_store.rs`, shared with the
//! `hub_custody` fuzz target (`fuzz/fuzz_targets/hub_custody.rs`, which includes this file):
//! the rules across connections as several server instances run them over one shared store:
//! each instance changes a user's record only through the record's methods, between a load and a
//! commit, as the reference server's driver does. A seeded random run interleaves publishes on
//! any instance, attaches and resumes on any instance (takeovers across instances included),
//! turns of live connections (acknowledgements, saves, takes), connection ends, instance crashes
//! and restarts, lease expiry, commits refused because another writer got there first, store
//! outages, and clock steps with sweeps. After every step the custody books must balance, a
//! session never gets one record twice while live, and gets them in order; at the end nothing
//! is held for ever.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use readyws_hub::{
    Attach, Copies, FreshCredentials, Holder, HubEvent, HubLimits, Kept, Leases, MailboxLimits,
    OverflowPolicy, Rules, Saved, UserId, UserRecord,
};
use readyws_protocol::frame::Resume;
use readyws_protocol::{Data, Outcome, ResumeToken, ServerConfig, ServerSession, Time};

/// Not a cryptographic hash: the test needs only that distinct short tokens differ.
fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in bytes.iter().enumerate() {
        out[i % 32] ^= byte.wrapping_add((i / 32) as u8);
    }
    out
}

/// Where a run's choices come from: a seeded generator (the test's 1,000 seeds), or the bytes
/// of a fuzzer's input, one or a few per choice, the run ending when they run out.
pub(crate) enum Choices {
    /// A seeded generator.
    Seeded(fastrand::Rng),
    /// A fuzzer's bytes, and how far the run has read them.
    Bytes {
        /// The input.
        bytes: Vec<u8>,
        /// The next byte to read.
        at: usize,
    },
}

impl Choices {
    /// Choices from the seeded generator.
    pub(crate) fn seeded(seed: u64) -> Self {
        Choices::Seeded(fastrand::Rng::with_seed(seed))
    }

    /// Choices read from `bytes`.
    pub(crate) fn bytes(bytes: &[u8]) -> Self {
        Choices::Bytes {
            bytes: bytes.to_vec(),
            at: 0,
        }
    }

    /// A number below `n` (at least 1).
    fn below(&mut self, n: u64) -> u64 {
        match self {
            Choices::Seeded(rng) => rng.u64(..n),
            Choices::Bytes { bytes, at } => {
                let width = if n <= 256 { 1 } else { 4 };
                let mut value = 0u64;
                for _ in 0..width {
                    value = value << 8 | u64::from(bytes.get(*at).copied().unwrap_or(0));
                    *at += 1;
                }
                value % n
            }
        }
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Whether a fuzzer's bytes are used up: the run then stops stepping and drains.
    fn exhausted(&self) -> bool {
        match self {
            Choices::Seeded(_) => false,
            Choices::Bytes { bytes, at } => *at >= bytes.len(),
        }
    }
}

const USERS: [&str; 3] = ["ana", "bo", "cy"];
const INSTANCES: usize = 3;
const LEASE: Duration = Duration::from_millis(200);

/// The shared store: versioned records, refusing a commit at random as if another writer had
/// committed first, and down for a while now and then.
struct SharedStore {
    records: BTreeMap<UserId, (u64, UserRecord)>,
    next_version: u64,
    down: bool,
    conflicts: u64,
}

struct Down;

impl SharedStore {
    /// Runs `change` on the record of `user` until a commit holds, as `Store::update` does:
    /// each refused commit throws the run's result and events away and runs `change` again on
    /// the record as loaded anew.
    fn update<R>(
        &mut self,
        rng: &mut Choices,
        user: &UserId,
        mut change: impl FnMut(&mut UserRecord, &mut VecDeque<HubEvent>) -> R,
    ) -> Result<(R, VecDeque<HubEvent>), Down> {
        if self.down {
            return Err(Down);
        }
        loop {
            let mut record = self
                .records
                .get(user)
                .map(|(_, record)| record.clone())
                .unwrap_or_default();
            let mut events = VecDeque::new();
            let result = change(&mut record, &mut events);
            if rng.below(8) == 7 {
                self.conflicts += 1;
                continue;
            }
            if record.is_empty() {
                // Removed; its ids continue where it stopped, as the reference stores do.
                let last = record.last_record();
                self.records.remove(user);
                self.records
                    .insert(user.clone(), (0, UserRecord::continuing_after(last)));
            } else {
                self.next_version += 1;
                self.records
                    .insert(user.clone(), (self.next_version, record));
            }
            return Ok((result, events));
        }
    }

    fn held(&self, user: &UserId) -> Vec<u64> {
        self.records
            .get(user)
            .map_or_else(Vec::new, |(_, record)| record.held_ids())
    }
}

/// Tells `record` how the copies in `settled` ended; returns the records whose custody this
/// ended (acknowledged while still held).
fn settle(
    record: &mut UserRecord,
    rules: &Rules,
    user: &UserId,
    settled: &[(u64, Outcome)],
    events: &mut VecDeque<HubEvent>,
) -> Vec<u64> {
    let mut ended = Vec::new();
    for (held, outcome) in settled {
        if matches!(outcome, Outcome::Acked) && record.held_ids().contains(held) {
            ended.push(*held);
        }
        record.copy_settled(rules, user, *held, outcome, events);
    }
    ended
}

/// A session as its connection task holds it.
struct Carried {
    user: UserId,
    session: ServerSession,
    copies: Copies,
    /// Copies that ended and the store has not been told of yet.
    settled: Vec<(u64, Outcome)>,
    /// Records this session was given while live on this connection, in order.
    given: Vec<u64>,
    /// Records published while it was live: each must reach it [CU-4].
    owed: BTreeSet<u64>,
}

/// A session kept for resume, as its client remembers it.
struct Remembered {
    user: UserId,
    resume: Resume,
    /// Records published while it was kept: each must reach it when resumed, even one another
    /// session acknowledged meanwhile [CU-4].
    owed: BTreeSet<u64>,
}

struct Instance {
    name: String,
    alive: bool,
    /// Until when its lease runs.
    lease_until: Time,
    conns: BTreeMap<u64, Carried>,
    woken: BTreeSet<u64>,
}

#[derive(Default)]
struct Books {
    accepted: usize,
    custody_ended: BTreeSet<(UserId, u64)>,
    dropped: usize,
}

struct World {
    rules: Rules,
    store: SharedStore,
    rng: Choices,
    now: Time,
    instances: Vec<Instance>,
    next_conn: u64,
    next_secret: u64,
    next_instance: u64,
    kept: Vec<Remembered>,
    books: Books,
    /// Every instance's lease as the store keeps it, the crashed and replaced ones too.
    leases: BTreeMap<String, Time>,
}

impl World {
    fn new(choices: Choices, overflow: OverflowPolicy) -> Self {
        let rules = Rules {
            protocol: ServerConfig::default().resume_window(Duration::from_millis(300)),
            limits: HubLimits {
                mailbox: MailboxLimits {
                    max_messages: 6,
                    max_bytes: 1 << 20,
                    ttl: Duration::from_millis(400),
                    overflow,
                },
                max_held_bytes: usize::MAX,
                max_sessions_per_user: 4,
            },
            digest,
        };
        let mut world = World {
            rules,
            store: SharedStore {
                records: BTreeMap::new(),
                next_version: 0,
                down: false,
                conflicts: 0,
            },
            rng: choices,
            now: Time::ZERO,
            instances: Vec::new(),
            next_conn: 1,
            next_secret: 1,
            next_instance: 1,
            kept: Vec::new(),
            books: Books::default(),
            leases: BTreeMap::new(),
        };
        for _ in 0..INSTANCES {
            let instance = world.new_instance();
            world.instances.push(instance);
        }
        world
    }

    fn new_instance(&mut self) -> Instance {
        self.next_instance += 1;
        let name = format!("i-{}", self.next_instance);
        self.leases.insert(name.clone(), self.now + LEASE);
        Instance {
            name,
            alive: true,
            lease_until: self.now + LEASE,
            conns: BTreeMap::new(),
            woken: BTreeSet::new(),
        }
    }

    fn fresh(&mut self) -> FreshCredentials {
        let mut token = || {
            self.next_secret += 1;
            let mut secret = [0u8; 16];
            secret[..8].copy_from_slice(&self.next_secret.to_le_bytes());
            ResumeToken::from_random_bytes(&secret).expect("16 bytes")
        };
        let (token, rotated) = (token(), token());
        FreshCredentials {
            session_id: format!("s-{}", self.next_secret),
            token,
            rotated,
        }
    }

    fn user(&mut self) -> UserId {
        UserId::new(USERS[self.rng.index(USERS.len())])
    }

    fn alive_instance(&mut self) -> Option<usize> {
        let alive: Vec<usize> = (0..self.instances.len())
            .filter(|i| self.instances[*i].alive)
            .collect();
        (!alive.is_empty()).then(|| alive[self.rng.index(alive.len())])
    }

    /// Whether an instance runs, as a driver judges it from leases.
    /// Judged by the core's rule from the leases as the store keeps them: a crashed
    /// instance's lease stays until it runs out (the store forgets it only after its sessions
    /// were kept for resume, which the sweep does here before any replacement matters).
    fn alive_fn(&self) -> impl Fn(&str) -> bool + use<> {
        let now = self.now;
        let leases = Leases::read(self.leases.clone());
        move |name: &str| leases.alive(name, now)
    }

    /// Applies the events of a commit: books, and wake-ups (a notice to another instance
    /// arrives, or is lost with its instance).
    fn account(&mut self, events: VecDeque<HubEvent>) {
        for event in events {
            match event {
                HubEvent::MailboxDropped { reason, count } if reason != "rejected" => {
                    self.books.dropped += count;
                }
                HubEvent::Wake(holder) => {
                    if let Some(instance) = self
                        .instances
                        .iter_mut()
                        .find(|i| i.alive && i.name == holder.instance)
                    {
                        instance.woken.insert(holder.conn);
                    }
                }
                _ => {}
            }
        }
    }

    fn publish(&mut self) {
        if self.alive_instance().is_none() {
            return;
        }
        let user = self.user();
        let data = Data::from_json(format!("{}", self.rng.below(1 << 32))).expect("JSON");
        let (rules, now) = (self.rules.clone(), self.now);
        let result = self.store.update(&mut self.rng, &user, |record, events| {
            record.publish(&rules, &user, data.clone(), now, events)
        });
        let Ok((published, events)) = result else {
            // The publisher is told the store is down: never accepted.
            return;
        };
        self.account(events);
        if published.is_ok() {
            self.books.accepted += 1;
            let newest = self.store.held(&user).last().copied();
            for instance in &mut self.instances {
                for carried in instance.conns.values_mut().filter(|c| c.user == user) {
                    carried.owed.extend(newest);
                }
            }
            for kept in self.kept.iter_mut().filter(|k| k.user == user) {
                kept.owed.extend(newest);
            }
        }
    }

    /// A client connects to instance `at`, resuming `resume` if given, and asks every holder
    /// to surrender until it gets the session or gives up.
    fn attach(&mut self, at: usize, user: UserId, resume: Option<Resume>, owed: BTreeSet<u64>) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let holder = Holder::new(self.instances[at].name.clone(), conn);
        let mut ticket = None;
        for _ in 0..4 {
            let fresh = self.fresh();
            let (rules, now, alive) = (self.rules.clone(), self.now, self.alive_fn());
            let result = self.store.update(&mut self.rng, &user, |record, events| {
                let mut attempt = ticket;
                let attached = record.attach(
                    &rules,
                    &user,
                    resume.as_ref(),
                    holder.clone(),
                    fresh.clone(),
                    now,
                    &mut attempt,
                    &alive,
                    events,
                );
                (attached, attempt)
            });
            let Ok(((attached, attempt), events)) = result else {
                return;
            };
            ticket = attempt;
            self.account(events);
            match attached {
                Attach::Ready {
                    session,
                    copies,
                    resumed,
                } => {
                    let mut distinct = BTreeSet::new();
                    for record in copies.values() {
                        assert!(distinct.insert(*record), "two copies of record {record}");
                    }
                    if resumed && self.rules.limits.mailbox.overflow == OverflowPolicy::RejectNew {
                        for id in &owed {
                            assert!(
                                distinct.contains(id),
                                "a resumed session lacks record {id}, published while it was kept"
                            );
                        }
                    }
                    let given: Vec<u64> = distinct.into_iter().collect();
                    self.instances[at].conns.insert(
                        conn,
                        Carried {
                            user,
                            session: *session,
                            copies,
                            settled: Vec::new(),
                            given,
                            owed: BTreeSet::new(),
                        },
                    );
                    return;
                }
                Attach::TakeOver { holder: carrier } => {
                    // The notice reaches the carrier if its instance runs; it gives the
                    // session back, and the attach is tried again.
                    if let Some(i) = self
                        .instances
                        .iter()
                        .position(|i| i.alive && i.name == carrier.instance)
                    {
                        self.detach(i, carrier.conn, false);
                    }
                }
                Attach::Superseded | Attach::TooManySessions { .. } => return,
            }
        }
    }

    /// One turn of a live connection: the copies that ended, the session's state, and what
    /// its mailbox gained, in one commit.
    fn turn(&mut self, at: usize, conn: u64) {
        let instance = &mut self.instances[at];
        let Some(carried) = instance.conns.get_mut(&conn) else {
            return;
        };
        instance.woken.remove(&conn);
        let holder = Holder::new(instance.name.clone(), conn);
        let kept = Kept::of(&carried.session, &carried.copies);
        let settled = carried.settled.clone();
        let user = carried.user.clone();
        let id = carried.session.id().to_owned();
        let rules = self.rules.clone();
        let result = self.store.update(&mut self.rng, &user, |record, events| {
            let ended = settle(record, &rules, &user, &settled, events);
            if record.save(&holder, &id, kept.clone()) == Saved::Fenced {
                return (ended, None);
            }
            (ended, Some(record.take_new(&holder)))
        });
        let Ok(((ended, taken), events)) = result else {
            // The store is down: the connection gets `goaway` and ends; the session stays
            // marked live on this instance until the client resumes it elsewhere or the
            // instance's next detach gets through.
            self.instances[at].woken.insert(conn);
            return;
        };
        for held in ended {
            assert!(
                self.books.custody_ended.insert((user.clone(), held)),
                "custody of {held} ended twice"
            );
        }
        self.account(events);
        let instance = &mut self.instances[at];
        let Some(carried) = instance.conns.get_mut(&conn) else {
            return;
        };
        carried.settled.clear();
        let Some(taken) = taken else {
            // Fenced: another connection carries the session; this one ends.
            instance.conns.remove(&conn);
            return;
        };
        readyws_hub::withdraw_from(&mut carried.session, &mut carried.copies, &taken.dropped);
        for (held, data) in taken.records {
            assert!(
                !carried.given.contains(&held),
                "record {held} given twice to one live session"
            );
            assert!(
                carried.given.last().is_none_or(|last| *last < held),
                "records out of order: {held} after {:?}",
                carried.given
            );
            carried.given.push(held);
            carried.owed.remove(&held);
            if let Ok(message) = carried.session.send(data, None, self.now) {
                carried.copies.insert(message, held);
            }
        }
    }

    /// The client acknowledges its oldest copy; the store learns at the next turn.
    fn acknowledge(&mut self, at: usize, conn: u64) {
        let Some(carried) = self.instances[at].conns.get_mut(&conn) else {
            return;
        };
        let Some((&message, &held)) = carried.copies.iter().next() else {
            return;
        };
        carried.copies.remove(&message);
        carried.settled.push((held, Outcome::Acked));
    }

    /// The connection ends; the session is kept for resume unless `ended`.
    fn detach(&mut self, at: usize, conn: u64, ended: bool) {
        let instance = &mut self.instances[at];
        let Some(mut carried) = instance.conns.remove(&conn) else {
            return;
        };
        instance.woken.remove(&conn);
        let holder = Holder::new(instance.name.clone(), conn);
        let resume = Resume {
            session_id: carried.session.id().to_owned(),
            resume_token: carried.session.resume_token().clone(),
            last_received: 0,
        };
        let (rules, now) = (self.rules.clone(), self.now);
        let user = carried.user.clone();
        let settled = carried.settled.clone();
        let result = self.store.update(&mut self.rng, &user, |record, events| {
            let ended_custody = settle(record, &rules, &user, &settled, events);
            record.detach(
                &rules,
                &user,
                &holder,
                &mut carried.session,
                &mut carried.copies,
                ended,
                now,
                events,
            );
            ended_custody
        });
        match result {
            Ok((ended_custody, events)) => {
                for held in ended_custody {
                    assert!(
                        self.books.custody_ended.insert((user.clone(), held)),
                        "custody of {held} ended twice"
                    );
                }
                self.account(events);
            }
            Err(Down) => {
                // The acknowledgements were never told: those records stay held, and the
                // session stays live on this instance until its client resumes it elsewhere
                // after the lease, or the instance dies.
            }
        }
        // Whether the detach got through or not, its client may come back and resume.
        if !ended {
            self.kept.push(Remembered {
                user,
                resume,
                owed: BTreeSet::new(),
            });
        }
    }

    /// The instance dies with every connection on it: nothing is detached.
    fn crash(&mut self, at: usize) {
        let instance = &mut self.instances[at];
        instance.alive = false;
        let conns = std::mem::take(&mut instance.conns);
        for (_, carried) in conns {
            self.kept.push(Remembered {
                user: carried.user,
                resume: Resume {
                    session_id: carried.session.id().to_owned(),
                    resume_token: carried.session.resume_token().clone(),
                    last_received: 0,
                },
                owed: BTreeSet::new(),
            });
        }
    }

    /// Time passes: leases are renewed by the instances that run, and one of them sweeps.
    fn tick(&mut self) {
        self.now = self.now + Duration::from_millis(1 + self.rng.below(149));
        for instance in self.instances.iter_mut().filter(|i| i.alive) {
            instance.lease_until = self.now + LEASE;
            self.leases
                .insert(instance.name.clone(), instance.lease_until);
        }
        if self.rng.below(6) == 0 {
            self.store.down = !self.store.down;
        }
        self.sweep();
    }

    fn sweep(&mut self) {
        let (rules, now, alive) = (self.rules.clone(), self.now, self.alive_fn());
        for user in USERS.map(UserId::new) {
            if let Ok((_, events)) = self.store.update(&mut self.rng, &user, |record, events| {
                record.sweep(&rules, &user, now, &alive, events)
            }) {
                self.account(events);
            }
        }
    }

    fn any_conn(&mut self) -> Option<(usize, u64)> {
        let all: Vec<(usize, u64)> = self
            .instances
            .iter()
            .enumerate()
            .flat_map(|(i, instance)| instance.conns.keys().map(move |conn| (i, *conn)))
            .collect();
        (!all.is_empty()).then(|| all[self.rng.index(all.len())])
    }

    fn step(&mut self) {
        match self.rng.below(14) {
            0..=2 => self.publish(),
            3 => {
                if let Some(at) = self.alive_instance() {
                    let user = self.user();
                    self.attach(at, user, None, BTreeSet::new());
                }
            }
            4 if !self.kept.is_empty() => {
                if let Some(at) = self.alive_instance() {
                    let index = self.rng.index(self.kept.len());
                    let kept = self.kept.swap_remove(index);
                    self.attach(at, kept.user, Some(kept.resume), kept.owed);
                }
            }
            5 | 6 => {
                if let Some((at, conn)) = self.any_conn() {
                    self.turn(at, conn);
                }
            }
            7 => {
                if let Some((at, conn)) = self.any_conn() {
                    self.acknowledge(at, conn);
                }
            }
            8 => {
                if let Some((at, conn)) = self.any_conn() {
                    let ended = self.rng.below(2) == 1;
                    self.detach(at, conn, ended);
                }
            }
            9 if self.rng.below(4) == 0 => {
                if let Some(at) = self.alive_instance() {
                    self.crash(at);
                }
            }
            10 => {
                // A dead instance is replaced by a new one (a new name, nothing carried).
                if let Some(at) = self.instances.iter().position(|i| !i.alive) {
                    self.instances[at] = self.new_instance();
                }
            }
            _ => self.tick(),
        }
    }

    fn held(&self) -> usize {
        USERS
            .iter()
            .map(|user| self.store.held(&UserId::new(*user)).len())
            .sum()
    }

    fn assert_books_balance(&self, seed: u64, step: usize) {
        let books = &self.books;
        assert_eq!(
            books.accepted,
            self.held() + books.custody_ended.len() + books.dropped,
            "seed {seed}, step {step}: accepted = held + acknowledged + dropped"
        );
    }

    /// A live session that has taken what it was woken for holds every record its user has
    /// held [CU-3] and every record published while it was live, even one another session acknowledged first [CU-4]; and (with
    /// nothing dropped to make room) every copy it holds is of a record still held or
    /// acknowledged: none expired under it [CU-5].
    fn assert_live_sessions_hold_their_copies(&self, seed: u64, step: usize) {
        for instance in self.instances.iter().filter(|i| i.alive) {
            for (conn, carried) in &instance.conns {
                let held = self.store.held(&carried.user);
                if !instance.woken.contains(conn) && !self.store.down {
                    for id in &held {
                        assert!(
                            carried.given.contains(id),
                            "seed {seed}, step {step}: live session on {conn} lacks held record {id} [CU-3]"
                        );
                    }
                    assert!(
                        carried.owed.is_empty(),
                        "seed {seed}, step {step}: live session on {conn} never got {:?}",
                        carried.owed
                    );
                }
                for id in carried.copies.values() {
                    assert!(
                        held.contains(id)
                            || self
                                .books
                                .custody_ended
                                .contains(&(carried.user.clone(), *id))
                            || carried.settled.iter().any(|(s, _)| s == id),
                        "seed {seed}, step {step}: record {id} expired under a live session's copy"
                    );
                }
            }
        }
    }
}

/// One run of at most `steps` steps, its choices from `choices`; `seed` names it in failures.
/// Returns how many commits the store refused.
pub(crate) fn run(choices: Choices, overflow: OverflowPolicy, steps: usize, seed: u64) -> u64 {
    let mut world = World::new(choices, overflow);
    for step in 0..steps {
        if world.rng.exhausted() {
            break;
        }
        world.step();
        world.assert_books_balance(seed, step);
        if overflow == OverflowPolicy::RejectNew {
            world.assert_live_sessions_hold_their_copies(seed, step);
        }
    }
    // In the end the store comes back, every connection turns and ends, and time passes
    // beyond every lease, window and time-to-live: nothing may stay held for ever.
    world.store.down = false;
    for at in 0..world.instances.len() {
        let conns: Vec<u64> = world.instances[at].conns.keys().copied().collect();
        for conn in conns {
            world.turn(at, conn);
            world.detach(at, conn, true);
        }
    }
    // One sweep after every lease ran out keeps the sessions of dead instances for resume; one
    // after their windows ends them and expires what they held.
    for _ in 0..2 {
        world.now = world.now + Duration::from_secs(10);
        world.sweep();
    }
    world.assert_books_balance(seed, usize::MAX);
    assert_eq!(world.held(), 0, "seed {seed}: messages held for ever");
    world.store.conflicts
}
