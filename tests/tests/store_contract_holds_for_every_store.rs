//! One contract, every store: the same tests run against [`MemoryStore`] and [`RedisStore`], on
//! a `redis-server` of the suite's own on a loopback port and on a Redis Cluster of three
//! loopback nodes. A store written for another
//! backend runs them by adding one line to [`every_store`] (`docs/ARCHITECTURE.md`, "Writing a
//! store"). What a store promises: a commit names the version it was based on and is refused
//! when that is outdated; an empty record goes; the deadline index may say a record is due
//! early, never late, and a claimed entry comes due again if its claimer never settles it;
//! leases and what an instance carries are kept until forgotten; a notice reaches the instance
//! it names and no other; a commit sent behind another lands after it or, if that one is
//! refused, not at all; and a store that cannot be reached says so.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use readyws_hub::{HubLimits, MailboxLimits, Rules, UserRecord};
use readyws_protocol::{Data, ServerConfig, Time};
use readyws_server::{
    Commit, MemoryStore, Notice, RedisStore, SentCommit, Store, StoreError, UserId, Versioned,
};
use readyws_tests::cluster::{RedisCluster, RedisProcess};

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in bytes.iter().enumerate() {
        out[i % 32] ^= *byte;
    }
    out
}

fn rules() -> Rules {
    Rules {
        protocol: ServerConfig::default(),
        limits: HubLimits {
            mailbox: MailboxLimits::default(),
            max_held_bytes: usize::MAX,
            max_sessions_per_user: 8,
        },
        digest,
    }
}

/// `record` with one more message held, accepted at `now`.
fn with_message(mut record: UserRecord, user: &UserId, n: u64, now: Time) -> UserRecord {
    let data = Data::from_json(n.to_string()).expect("JSON");
    record
        .publish(&rules(), user, data, now, &mut VecDeque::new())
        .expect("room");
    record
}

fn at(millis: u64) -> Time {
    Time::from_millis(millis)
}

/// What keeps a store's servers running until a test ends.
type Servers = Option<Box<dyn std::any::Any + Send>>;

/// The stores under test, each with what keeps it alive: memory, one Redis primary, and a Redis
/// Cluster of three primaries.
async fn every_store() -> Vec<(&'static str, Arc<dyn Store>, Servers)> {
    let redis = RedisProcess::start().expect("redis-server");
    let store = RedisStore::connect(&redis.url())
        .await
        .expect("the suite's redis-server answers");
    let cluster = RedisCluster::start().expect("a Redis Cluster on loopback");
    let clustered = RedisStore::connect(&cluster.url())
        .await
        .expect("the suite's Redis Cluster answers");
    vec![
        (
            "memory",
            Arc::new(MemoryStore::new()) as Arc<dyn Store>,
            None,
        ),
        (
            "redis",
            Arc::new(store) as Arc<dyn Store>,
            Some(Box::new(redis)),
        ),
        (
            "redis cluster",
            Arc::new(clustered) as Arc<dyn Store>,
            Some(Box::new(cluster)),
        ),
    ]
}

/// A commit names the version it read: based on the current one it is written and the record
/// reads back with a new version; based on an outdated one it is refused and nothing changes.
#[tokio::test]
async fn a_commit_on_an_outdated_version_is_refused() {
    for (name, store, _redis) in every_store().await {
        let alice = UserId::new("alice");
        let fresh = store.load(&alice).await.expect("load");
        assert_eq!(fresh.version, 0, "{name}: an unknown user has version 0");
        assert!(fresh.record.is_empty(), "{name}: and an empty record");

        let one = with_message(fresh.record.clone(), &alice, 1, at(0));
        let Commit::Done(first) = store
            .commit(&alice, 0, &one, None, false)
            .await
            .expect("commit")
        else {
            panic!("{name}: the first commit is written");
        };
        assert_ne!(first, 0, "{name}: a written record has a version");
        let read = store.load(&alice).await.expect("load");
        assert_eq!(read.version, first, "{name}: the version reads back");
        assert_eq!(
            read.record.held_ids(),
            one.held_ids(),
            "{name}: so does the record"
        );

        let two = with_message(read.record.clone(), &alice, 2, at(0));
        let stale = with_message(one.clone(), &alice, 3, at(0));
        let Commit::Done(second) = store
            .commit(&alice, first, &two, None, false)
            .await
            .expect("commit")
        else {
            panic!("{name}: a commit on the current version is written");
        };
        match store
            .commit(&alice, first, &stale, None, false)
            .await
            .expect("commit")
        {
            Commit::Conflict { current } => {
                if let Some(current) = current {
                    assert_eq!(
                        (current.version, current.record.held_ids()),
                        (second, two.held_ids()),
                        "{name}: a conflict that tells the record tells the current one"
                    );
                }
            }
            Commit::Done(_) => panic!(
                "{name}: a commit based on the first version is refused once a second is written"
            ),
        }
        assert_eq!(
            store.load(&alice).await.expect("load").record.held_len(),
            2,
            "{name}: the refused commit changed nothing"
        );
        assert!(
            store
                .commit(&alice, 0, &stale, None, false)
                .await
                .expect("commit")
                .is_conflict(),
            "{name}: version 0 means no record, and there is one"
        );
    }
}

/// A record left empty is removed: the user reads as unknown again.
#[tokio::test]
async fn an_empty_record_is_removed() {
    for (name, store, _redis) in every_store().await {
        let bo = UserId::new("bo");
        let one = with_message(UserRecord::default(), &bo, 1, at(0));
        let Commit::Done(version) = store
            .commit(&bo, 0, &one, None, false)
            .await
            .expect("commit")
        else {
            panic!("{name}: written");
        };
        let Versioned { mut record, .. } = store.load(&bo).await.expect("load");
        let mut events = VecDeque::new();
        let id = record.held_ids()[0];
        record.copy_settled(
            &rules(),
            &bo,
            id,
            &readyws_protocol::Outcome::Acked,
            &mut events,
        );
        assert!(record.is_empty());
        assert!(matches!(
            store
                .commit(&bo, version, &record, None, false)
                .await
                .expect("commit"),
            Commit::Done(_)
        ));
        let after = store.load(&bo).await.expect("load");
        assert_eq!(after.version, 0, "{name}: an empty record is not kept");
    }
}

/// Changes from many tasks at once to one user all land: each conflict is loaded again and
/// retried, none is lost and none applied twice.
#[tokio::test]
async fn concurrent_updates_of_one_user_all_land_once() {
    for (name, store, _redis) in every_store().await {
        let cy = UserId::new("cy");
        let mut tasks = Vec::new();
        for n in 0..24u64 {
            let store = store.clone();
            let cy = cy.clone();
            tasks.push(tokio::spawn(async move {
                let rules = rules();
                let mut change = |record: &mut UserRecord| {
                    let data = Data::from_json(n.to_string()).expect("JSON");
                    record
                        .publish(&rules, &cy, data, at(0), &mut VecDeque::new())
                        .expect("room");
                    true
                };
                store.update(&cy, None, &mut change).await.map(|_| ())
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("update");
        }
        let record = store.load(&cy).await.expect("load").record;
        assert_eq!(record.held_len(), 24, "{name}: every change landed once");
    }
}

/// An update may start from the record as its caller last committed it instead of a load: if
/// another writer moved the record on meanwhile, the update still lands on the current record,
/// and what the other writer did stays.
#[tokio::test]
async fn an_update_from_an_outdated_copy_lands_on_the_current_record() {
    for (name, store, _redis) in every_store().await {
        let dee = UserId::new("dee");
        let publish = |n: u64| {
            let dee = dee.clone();
            move |record: &mut UserRecord| {
                *record = with_message(record.clone(), &dee, n, at(0));
                true
            }
        };
        let mine = store
            .update(&dee, None, &mut publish(1))
            .await
            .expect("update");
        // Another writer, which loads.
        store
            .update(&dee, None, &mut publish(2))
            .await
            .expect("update");
        let after = store
            .update(&dee, mine.map(|written| written.now), &mut publish(3))
            .await
            .expect("update");
        let record = store.load(&dee).await.expect("load");
        assert_eq!(
            record.record.held_len(),
            3,
            "{name}: the update from an outdated copy kept the other writer's change"
        );
        if let Some(after) = after {
            assert_eq!(
                (after.now.version, after.now.record.held_ids()),
                (record.version, record.record.held_ids()),
                "{name}: the record returned is the one committed"
            );
        }
    }
}

/// `record`, marked as the one at its version, with one more message: what the next
/// incremental commit writes.
fn marked_with_message(record: &UserRecord, user: &UserId, n: u64) -> UserRecord {
    let mut next = record.clone();
    next.mark_held();
    with_message(next, user, n, at(0))
}

/// Polls a sent commit once, which puts it on its way, and keeps it.
async fn on_its_way(mut sent: SentCommit) -> SentCommit {
    let first = std::future::poll_fn(|cx| Poll::Ready(sent.answer.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "a commit is not answered before it is sent"
    );
    sent
}

/// A store that sends commits without waiting for their answers lets a second one go behind the
/// first, naming the version the first writes: both land, in order. When the first is refused
/// (it names an outdated version), so is the one behind it, and neither writes anything. A store
/// that does not pipeline (`send_commit` answers `None`) commits a round trip at a time.
#[tokio::test]
async fn a_commit_sent_behind_another_lands_after_it_or_not_at_all() {
    for (name, store, _redis) in every_store().await {
        let gus = UserId::new("gus");
        let start = store.load(&gus).await.expect("load");
        let one = marked_with_message(&start.record, &gus, 1);
        let Some(first) = store.send_commit(&gus, start.version, &one, None) else {
            continue;
        };
        let first = on_its_way(first).await;
        assert_ne!(first.version, 0, "{name}: a record written has a version");
        let two = marked_with_message(&one, &gus, 2);
        let second = on_its_way(
            store
                .send_commit(&gus, first.version, &two, None)
                .expect("the same store sends the next commit too"),
        )
        .await;
        let (first_version, second_version) = (first.version, second.version);
        let (first, second) = tokio::join!(first.answer, second.answer);
        assert!(
            matches!(first, Ok(Commit::Done(v)) if v == first_version),
            "{name}: the first commit lands: {first:?}"
        );
        assert!(
            matches!(second, Ok(Commit::Done(v)) if v == second_version),
            "{name}: and the one sent behind it, on the version the first wrote: {second:?}"
        );
        let read = store.load(&gus).await.expect("load");
        assert_eq!(
            (read.version, read.record.held_ids()),
            (second_version, two.held_ids()),
            "{name}: the record is the second commit's"
        );

        // A first commit on an outdated version, and one sent behind it.
        let stale = marked_with_message(&one, &gus, 3);
        let refused = on_its_way(
            store
                .send_commit(&gus, first_version, &stale, None)
                .expect("sent"),
        )
        .await;
        let behind = marked_with_message(&stale, &gus, 4);
        let behind = on_its_way(
            store
                .send_commit(&gus, refused.version, &behind, None)
                .expect("sent"),
        )
        .await;
        let (refused, behind) = tokio::join!(refused.answer, behind.answer);
        assert!(
            refused.as_ref().is_ok_and(Commit::is_conflict),
            "{name}: a commit on an outdated version is refused: {refused:?}"
        );
        assert!(
            behind.as_ref().is_ok_and(Commit::is_conflict),
            "{name}: and so is the one sent behind it: {behind:?}"
        );
        let read = store.load(&gus).await.expect("load");
        assert_eq!(
            (read.version, read.record.held_ids()),
            (second_version, two.held_ids()),
            "{name}: neither wrote anything"
        );
    }
}

/// A store may keep each held message apart and commit only what changed: a mailbox grown
/// one message at a time and emptied in part reads back whole, in order, with its data; and a
/// commit of a whole record (no list of what it held before) replaces what was there.
#[tokio::test]
async fn held_messages_read_back_whole_after_commits_of_what_changed() {
    for (name, store, _redis) in every_store().await {
        let fay = UserId::new("fay");
        for n in 0..200u64 {
            store
                .update(&fay, None, &mut |record: &mut UserRecord| {
                    *record = with_message(record.clone(), &fay, n, at(0));
                    true
                })
                .await
                .expect("update");
        }
        let Versioned { record, .. } = store.load(&fay).await.expect("load");
        assert_eq!(record.held_len(), 200, "{name}");
        let data: Vec<String> = record
            .held_messages()
            .map(|(_, _, data)| data.as_json().to_owned())
            .collect();
        assert_eq!(
            data,
            (0..200).map(|n| n.to_string()).collect::<Vec<_>>(),
            "{name}: every message's data, oldest first"
        );
        // Every other message acknowledged, in one change.
        let acked: Vec<u64> = record.held_ids().into_iter().step_by(2).collect();
        store
            .update(&fay, None, &mut |record: &mut UserRecord| {
                for id in &acked {
                    record.copy_settled(
                        &rules(),
                        &fay,
                        *id,
                        &readyws_protocol::Outcome::Acked,
                        &mut VecDeque::new(),
                    );
                }
                true
            })
            .await
            .expect("update");
        let Versioned { record, version } = store.load(&fay).await.expect("load");
        assert_eq!(record.held_len(), 100, "{name}: the acknowledged ones went");
        assert!(
            record.held_ids().iter().all(|id| !acked.contains(id)),
            "{name}"
        );
        // A whole record replaces the stored one.
        let replacement = with_message(UserRecord::continuing_after(1_000), &fay, 7, at(0));
        let Commit::Done(_) = store
            .commit(&fay, version, &replacement, None, false)
            .await
            .expect("commit")
        else {
            panic!("{name}: written");
        };
        let back = store.load(&fay).await.expect("load").record;
        assert_eq!(back.held_ids(), replacement.held_ids(), "{name}");
        assert_eq!(
            back.held_messages()
                .map(|(_, _, data)| data.as_json().to_owned())
                .collect::<Vec<_>>(),
            vec!["7".to_owned()],
            "{name}"
        );
    }
}

/// The deadline index says when a record is due, may say it early but never late, hands a due
/// record out claimed, and hands it out again if the claim is never settled.
#[tokio::test]
async fn the_deadline_index_is_never_late_and_claims_run_out() {
    for (name, store, _redis) in every_store().await {
        let dee = UserId::new("dee");
        let one = with_message(UserRecord::default(), &dee, 1, at(0));
        let Commit::Done(v1) = store
            .commit(&dee, 0, &one, Some(at(1_000)), false)
            .await
            .expect("commit")
        else {
            panic!("{name}: written");
        };
        assert!(
            store
                .take_due(at(999), at(5_000), 10)
                .await
                .expect("due")
                .is_empty(),
            "{name}: not due before its deadline"
        );
        // A later deadline never hides the earlier one.
        let two = with_message(one.clone(), &dee, 2, at(0));
        let Commit::Done(_) = store
            .commit(&dee, v1, &two, Some(at(3_000)), false)
            .await
            .expect("commit")
        else {
            panic!("{name}: written");
        };
        let due = store.take_due(at(1_000), at(5_000), 10).await.expect("due");
        assert_eq!(due.len(), 1, "{name}: due at the earlier deadline");
        assert_eq!(due[0].user, dee);
        assert!(
            store
                .take_due(at(4_999), at(9_000), 10)
                .await
                .expect("due")
                .is_empty(),
            "{name}: claimed until 5 s"
        );
        let again = store.take_due(at(5_000), at(9_000), 10).await.expect("due");
        assert_eq!(again.len(), 1, "{name}: a claim never settled runs out");
        store
            .settle_due(&again[0], Some(at(20_000)))
            .await
            .expect("settle");
        assert!(
            store
                .take_due(at(19_999), at(30_000), 10)
                .await
                .expect("due")
                .is_empty(),
            "{name}: settled to its next deadline"
        );
        assert_eq!(
            store
                .take_due(at(20_000), at(30_000), 10)
                .await
                .expect("due")
                .len(),
            1,
            "{name}: due then"
        );
    }
}

/// A commit that moves a claimed entry earlier wins over the claimer's settle: the index keeps
/// the earlier of the two, and an entry settled with no deadline is gone.
#[tokio::test]
async fn a_settle_never_hides_an_earlier_deadline() {
    for (name, store, _redis) in every_store().await {
        let eve = UserId::new("eve");
        let one = with_message(UserRecord::default(), &eve, 1, at(0));
        let Commit::Done(v1) = store
            .commit(&eve, 0, &one, Some(at(100)), false)
            .await
            .expect("commit")
        else {
            panic!("{name}: written");
        };
        let due = store.take_due(at(100), at(10_000), 10).await.expect("due");
        assert_eq!(due.len(), 1);
        // Meanwhile another instance commits with an earlier deadline than the settle's.
        let two = with_message(one, &eve, 2, at(0));
        let Commit::Done(_) = store
            .commit(&eve, v1, &two, Some(at(500)), false)
            .await
            .expect("commit")
        else {
            panic!("{name}: written");
        };
        store
            .settle_due(&due[0], Some(at(8_000)))
            .await
            .expect("settle");
        assert_eq!(
            store
                .take_due(at(500), at(10_000), 10)
                .await
                .expect("due")
                .len(),
            1,
            "{name}: the earlier deadline stands"
        );
        let due = store
            .take_due(at(10_000), at(20_000), 10)
            .await
            .expect("due");
        assert_eq!(due.len(), 1);
        store.settle_due(&due[0], None).await.expect("settle");
        assert!(
            store
                .take_due(at(u64::MAX / 2), at(u64::MAX / 2), 10)
                .await
                .expect("due")
                .is_empty(),
            "{name}: settled with no deadline, the entry is gone"
        );
    }
}

/// Leases and what an instance carries are kept until the instance is forgotten.
#[tokio::test]
async fn leases_and_what_an_instance_carries_are_kept_until_forgotten() {
    for (name, store, _redis) in every_store().await {
        let users = [UserId::new("fay"), UserId::new("gus")];
        store
            .renew_lease("i-a", at(3_000), &users)
            .await
            .expect("lease");
        store
            .renew_lease("i-b", at(4_000), &[])
            .await
            .expect("lease");
        store
            .renew_lease("i-a", at(5_000), &[])
            .await
            .expect("lease");
        let leases = store.leases().await.expect("leases");
        assert_eq!(leases.get("i-a"), Some(&at(5_000)), "{name}: renewed");
        assert_eq!(leases.get("i-b"), Some(&at(4_000)), "{name}");
        let mut carried = store.carried("i-a").await.expect("carried");
        carried.sort();
        assert_eq!(
            carried, users,
            "{name}: what it carries is kept across renewals"
        );
        store.forget_instance("i-a").await.expect("forget");
        assert!(
            !store.leases().await.expect("leases").contains_key("i-a"),
            "{name}"
        );
        assert!(
            store.carried("i-a").await.expect("carried").is_empty(),
            "{name}"
        );
    }
}

/// A notice reaches the instance it names, and no other.
#[tokio::test]
async fn a_notice_reaches_the_instance_it_names_and_no_other() {
    for (name, store, _redis) in every_store().await {
        let mut a = store.subscribe("i-a").await.expect("subscribe");
        let mut b = store.subscribe("i-b").await.expect("subscribe");
        let hal = UserId::new("hal");
        let written = store
            .update(&hal, None, &mut |record: &mut UserRecord| {
                *record = with_message(record.clone(), &hal, 1, at(0));
                true
            })
            .await
            .expect("update")
            .map(Box::new);
        let wake = Notice::Wake {
            user: hal.clone(),
            written,
        };
        store.notify("i-a", &wake).await.expect("notify");
        store
            .notify("i-b", &Notice::Surrender { conn: 7 })
            .await
            .expect("notify");
        let got = tokio::time::timeout(Duration::from_secs(5), a.next()).await;
        let got = got.ok().flatten();
        assert_eq!(got, Some(wake.clone()), "{name}: a got its notice");
        if let (
            Some(Notice::Wake {
                written: Some(got), ..
            }),
            Notice::Wake {
                written: Some(sent),
                ..
            },
        ) = (got, wake)
        {
            assert_eq!(
                got.now.record.held_ids(),
                sent.now.record.held_ids(),
                "{name}: the record in a notice arrives whole"
            );
        }
        let got = tokio::time::timeout(Duration::from_secs(5), b.next()).await;
        assert_eq!(
            got.ok().flatten(),
            Some(Notice::Surrender { conn: 7 }),
            "{name}: b got its own, not a's"
        );
    }
}

/// A store that cannot be reached says so, typed, after its retries; nothing is written.
#[tokio::test]
async fn a_store_that_is_down_says_so() {
    let mut redis = RedisProcess::start().expect("redis-server");
    let store = RedisStore::connect(&redis.url())
        .await
        .expect("the suite's redis-server answers");
    redis.kill();
    hold_ports(&redis.url());
    refuses_while_down("redis", &store).await;

    let mut cluster = RedisCluster::start().expect("a Redis Cluster on loopback");
    let store = RedisStore::connect(&cluster.url())
        .await
        .expect("the suite's Redis Cluster answers");
    cluster.kill();
    hold_ports(&cluster.url());
    refuses_while_down("redis cluster", &store).await;
}

/// Keeps the ports of a killed Redis from going to another test's new `redis-server` (the
/// suite starts many at once): each takes connections and closes them at once, as a Redis
/// that is down does to a client.
fn hold_ports(url: &str) {
    let hosts = url.split("://").nth(1).unwrap_or_default();
    for host in hosts.split(',') {
        let Some(listener) = host
            .parse::<std::net::SocketAddr>()
            .ok()
            .and_then(|address| std::net::TcpListener::bind(address).ok())
        else {
            continue;
        };
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                drop(connection);
            }
        });
    }
}

async fn refuses_while_down(name: &str, store: &RedisStore) {
    let user = UserId::new("ivy");
    let error = store
        .load(&user)
        .await
        .expect_err(&format!("{name}: Redis is down"));
    assert!(
        matches!(
            error,
            StoreError::Unavailable {
                operation: "load",
                ..
            }
        ),
        "{name}: {error:?}"
    );
    let record = with_message(UserRecord::default(), &user, 1, at(0));
    let error = store
        .commit(&user, 0, &record, None, false)
        .await
        .expect_err("Redis is down");
    assert!(
        matches!(error, StoreError::Unavailable { .. }),
        "{name}: {error:?}"
    );
}
