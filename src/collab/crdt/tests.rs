//! Laws and regressions of the task-list CRDT.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use x0x_proto::{Identity, PeerId};

use super::*;
use crate::collab::Output;
use crate::collab::envelope::TopicId;
use crate::collab::testutil::{identity, memo_check};
use crate::collab::util::WallClock;

const CASES: u32 = 10_000;

fn ids() -> &'static [Identity] {
    static IDS: OnceLock<Vec<Identity>> = OnceLock::new();
    IDS.get_or_init(|| (1..=4).map(identity).collect())
}

fn list_id() -> TopicId {
    TopicId::new("tasks")
}

fn peer(i: usize) -> PeerId {
    ids()[i].peer_id()
}

// ---------------------------------------------------------------- registers

fn stamp() -> impl Strategy<Value = Stamp> {
    (0u64..4, 0usize..3).prop_map(|(lamport, a)| Stamp {
        lamport,
        author: peer(a),
    })
}

fn lww() -> impl Strategy<Value = LwwRegister<u8>> {
    proptest::collection::vec((stamp(), 0u8..3), 0..3).prop_map(|writes| {
        let mut r = LwwRegister::new();
        for (s, v) in writes {
            r.set(s, v);
        }
        r
    })
}

fn first_writer() -> impl Strategy<Value = FirstWriter> {
    proptest::collection::vec(stamp(), 0..3).prop_map(|writes| {
        let mut r = FirstWriter::default();
        for s in writes {
            r.set(s);
        }
        r
    })
}

fn orset() -> impl Strategy<Value = OrSet<u8, u8>> {
    proptest::collection::vec((0u8..3, 0u8..6, any::<bool>(), any::<u8>()), 0..6).prop_map(|ops| {
        let mut s = OrSet::new();
        for (e, tag, add, mask) in ops {
            if add {
                s.add(e, tag);
            } else {
                let observed: Vec<u8> = (0..6).filter(|t| mask & (1 << t) != 0).collect();
                s.remove(e, observed);
            }
        }
        s
    })
}

fn vv() -> impl Strategy<Value = VersionVector> {
    proptest::collection::vec((0usize..3, 0u64..5), 0..4).prop_map(|e| {
        let mut v = VersionVector::new();
        for (a, n) in e {
            v.set(peer(a), n);
        }
        v
    })
}

macro_rules! join_laws {
    ($t:ty; $a:expr, $b:expr, $c:expr) => {{
        let (a, b, c): ($t, $t, $t) = ($a, $b, $c);
        let m = |x: &$t, y: &$t| -> $t {
            let mut x = x.clone();
            x.merge(y);
            x
        };
        prop_assert_eq!(m(&a, &b), m(&b, &a), "commutative");
        prop_assert_eq!(m(&m(&a, &b), &c), m(&a, &m(&b, &c)), "associative");
        prop_assert_eq!(m(&a, &a), a.clone(), "idempotent");
    }};
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// LWW register: merge is commutative, associative, idempotent.
    #[test]
    fn lww_register_merge_is_a_join(a in lww(), b in lww(), c in lww()) {
        join_laws!(LwwRegister<u8>; a, b, c);
    }

    /// First-writer (claim) register: the same laws.
    #[test]
    fn first_writer_register_merge_is_a_join(a in first_writer(), b in first_writer(), c in first_writer()) {
        join_laws!(FirstWriter; a, b, c);
    }

    /// OR-set: the same laws.
    #[test]
    fn orset_merge_is_a_join(a in orset(), b in orset(), c in orset()) {
        join_laws!(OrSet<u8, u8>; a, b, c);
    }

    /// Version vector: the same laws.
    #[test]
    fn version_vector_merge_is_a_join(a in vv(), b in vv(), c in vv()) {
        join_laws!(VersionVector; a, b, c);
    }
}

/// The bug upstream shipped: with three writers at the same Lamport time,
/// tie-breaking by a hash of merged clocks made `(a⊔b)⊔c ≠ a⊔(b⊔c)`.
/// Here the author id breaks the tie, the same way in every grouping and
/// order, on registers and on whole task lists.
#[test]
fn regression_lww_three_concurrent_writers_converge() {
    let w: Vec<LwwRegister<&str>> = ["from 0", "from 1", "from 2"]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            LwwRegister::with(
                Stamp {
                    lamport: 7,
                    author: peer(i),
                },
                *v,
            )
        })
        .collect();
    let winner = (0..3).max_by_key(|&i| peer(i)).unwrap();
    let expected = ["from 0", "from 1", "from 2"][winner];
    for perm in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        let [x, y, z] = perm.map(|i| w[i].clone());
        let mut left = x.clone();
        left.merge(&y);
        left.merge(&z);
        let mut yz = y.clone();
        yz.merge(&z);
        let mut right = x.clone();
        right.merge(&yz);
        assert_eq!(left, right);
        assert_eq!(left.get(), Some(&expected));
    }

    // The same through task lists: three replicas retitle one task concurrently.
    let mut base = TaskList::new(list_id(), memo_check());
    let add = base.apply_own(
        &ids()[0],
        OpKind::Add {
            title: "t".into(),
            description: String::new(),
        },
        0,
    );
    let task = add.op.id;
    let replicas: Vec<TaskList> = (0..3)
        .map(|i| {
            let mut r = base.clone();
            r.apply_own(
                &ids()[i],
                OpKind::SetTitle {
                    task,
                    title: format!("from {i}"),
                },
                0,
            );
            r
        })
        .collect();
    let mut titles = vec![];
    for perm in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let mut left = replicas[perm[0]].clone();
        left.merge(&replicas[perm[1]]);
        left.merge(&replicas[perm[2]]);
        let mut right_inner = replicas[perm[1]].clone();
        right_inner.merge(&replicas[perm[2]]);
        let mut right = replicas[perm[0]].clone();
        right.merge(&right_inner);
        assert_eq!(left, right);
        titles.push(left.task(&task).unwrap().title);
    }
    assert!(titles.iter().all(|t| *t == titles[0]));
    // All three writes had Lamport time 2; the largest author id wins.
    assert_eq!(titles[0], format!("from {winner}"));
}

// --------------------------------------------------------------- task lists

#[derive(Debug, Clone)]
enum Action {
    Op {
        author: usize,
        kind: u8,
        target: usize,
        text: u8,
    },
    Sync {
        from: usize,
        to: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0usize..3, 0u8..8, 0usize..8, 0u8..4)
            .prop_map(|(author, kind, target, text)| Action::Op { author, kind, target, text }),
        1 => (0usize..3, 0usize..3).prop_map(|(from, to)| Action::Sync { from, to }),
    ]
}

/// Three authors editing their own replicas and syncing now and then:
/// concurrent operations with realistic Lamport times. Returns every
/// operation made. Wall clocks are deliberately all over the place.
fn run(script: &[Action]) -> Vec<SignedOp> {
    let mut replicas: Vec<TaskList> = (0..3)
        .map(|_| TaskList::new(list_id(), memo_check()))
        .collect();
    let mut all = vec![];
    for a in script {
        match *a {
            Action::Op {
                author,
                kind,
                target,
                text,
            } => {
                let r = &mut replicas[author];
                let known: Vec<TaskId> = r
                    .ops()
                    .filter(|o| matches!(o.op.kind, OpKind::Add { .. }))
                    .map(|o| o.op.id)
                    .collect();
                let kind = if known.is_empty() || kind < 2 {
                    OpKind::Add {
                        title: format!("t{text}"),
                        description: String::new(),
                    }
                } else {
                    let task = known[target % known.len()];
                    match kind {
                        2 => OpKind::SetTitle {
                            task,
                            title: format!("t{text}"),
                        },
                        3 => OpKind::SetDescription {
                            task,
                            description: format!("d{text}"),
                        },
                        4 => OpKind::Claim { task },
                        5 => OpKind::Done { task },
                        6 => OpKind::Remove {
                            task,
                            observed: r.observed_tags(&task),
                        },
                        _ => OpKind::Restore { task },
                    }
                };
                let wall = 1_000_000 - u64::from(text) * 100_000 - author as u64;
                all.push(r.apply_own(&ids()[author], kind, wall));
            }
            Action::Sync { from, to } => {
                let src = replicas[from].clone();
                replicas[to].merge(&src);
            }
        }
    }
    all
}

/// A replica holding the operations selected by `mask`, inserted in an
/// order drawn from `seed`.
fn replica(ops: &[SignedOp], mask: u64, seed: u64) -> TaskList {
    let mut chosen: Vec<&SignedOp> = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << (i % 64)) != 0)
        .map(|(_, o)| o)
        .collect();
    chosen.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut r = TaskList::new(list_id(), memo_check());
    for op in chosen {
        if !r.contains(&op.op.id) {
            r.insert_trusted(op.clone());
        }
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Task list: merge is commutative, associative and idempotent, on the
    /// state and on the view.
    #[test]
    fn task_list_merge_is_a_join(
        script in proptest::collection::vec(action(), 1..10),
        masks in any::<[u64; 3]>(),
        seed in any::<u64>(),
    ) {
        let ops = run(&script);
        let [a, b, c] = [0, 1, 2].map(|i| replica(&ops, masks[i], seed ^ i as u64));
        let m = |x: &TaskList, y: &TaskList| { let mut x = x.clone(); x.merge(y); x };
        let (ab, ba) = (m(&a, &b), m(&b, &a));
        prop_assert_eq!(&ab, &ba, "commutative");
        prop_assert_eq!(ab.tasks(), ba.tasks());
        let (l, r) = (m(&ab, &c), m(&a, &m(&b, &c)));
        prop_assert_eq!(&l, &r, "associative");
        prop_assert_eq!(l.tasks(), r.tasks());
        prop_assert_eq!(&m(&a, &a), &a, "idempotent");
    }

    /// Five replicas receiving the same operations in any order, with any
    /// duplication, through the verifying `apply`, converge to the same
    /// state (the one of the in-order replica).
    #[test]
    fn five_replicas_converge_under_any_order_and_duplication(
        script in proptest::collection::vec(action(), 1..10),
        orders in any::<[u64; 5]>(),
        dups in any::<[u64; 5]>(),
    ) {
        let ops = run(&script);
        let reference = replica(&ops, u64::MAX, 0);
        for k in 0..5 {
            let mut seq: Vec<SignedOp> = ops.clone();
            for (i, op) in ops.iter().enumerate() {
                if dups[k] & (1 << (i % 64)) != 0 {
                    seq.push(op.clone());
                }
            }
            seq.shuffle(&mut StdRng::seed_from_u64(orders[k]));
            let mut r = TaskList::new(list_id(), memo_check());
            for op in seq {
                prop_assert!(r.apply(op).is_ok());
            }
            prop_assert_eq!(&r, &reference);
            prop_assert_eq!(r.tasks(), reference.tasks());
        }
    }

    /// Status never moves backwards, whatever order operations arrive in.
    #[test]
    fn status_never_moves_backwards(
        script in proptest::collection::vec(action(), 1..12),
        seed in any::<u64>(),
    ) {
        let mut ops = run(&script);
        ops.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut r = TaskList::new(list_id(), memo_check());
        let mut last: BTreeMap<TaskId, Status> = BTreeMap::new();
        for op in ops {
            r.insert_trusted(op);
            for (id, before) in last.iter() {
                prop_assert!(r.status_of(id).unwrap() >= *before);
            }
            for o in r.ops() {
                if let OpKind::Add { .. } = o.op.kind {
                    last.insert(o.op.id, r.status_of(&o.op.id).unwrap());
                }
            }
        }
    }
}

#[test]
fn backdated_wall_clock_cannot_win_a_claim() {
    const NOW: u64 = 1_700_000_000_000;
    const DAY: u64 = 86_400_000;
    let (alice, bob) = (&ids()[0], &ids()[1]);
    let mut a = TaskList::new(list_id(), memo_check());
    let add = a.apply_own(
        alice,
        OpKind::Add {
            title: "ship it".into(),
            description: String::new(),
        },
        NOW,
    );
    let task = add.op.id;
    let mut b = a.clone();

    // Alice claims; Bob sees it, then claims with his clock a day behind.
    let a_claim = a.apply_own(alice, OpKind::Claim { task }, NOW);
    b.apply(a_claim.clone()).unwrap();
    let b_claim = b.make_op(bob, OpKind::Claim { task }, NOW - DAY);
    assert!(b_claim.op.lamport > a_claim.op.lamport);
    for r in [&mut a, &mut b] {
        r.apply(b_claim.clone()).unwrap();
        assert_eq!(r.task(&task).unwrap().claimed_by, Some(alice.peer_id()));
    }

    // Concurrent claims (neither saw the other): the lower (Lamport, author)
    // wins on both replicas; the wall clock does not matter either way.
    for (wall_a, wall_b) in [(NOW, NOW - DAY), (NOW - DAY, NOW)] {
        let mut base = TaskList::new(list_id(), memo_check());
        let add = base.apply_own(
            alice,
            OpKind::Add {
                title: "x".into(),
                description: String::new(),
            },
            NOW,
        );
        let task = add.op.id;
        let (mut ra, mut rb) = (base.clone(), base.clone());
        let ca = ra.apply_own(alice, OpKind::Claim { task }, wall_a);
        let cb = rb.apply_own(bob, OpKind::Claim { task }, wall_b);
        assert_eq!(ca.op.lamport, cb.op.lamport);
        ra.apply(cb).unwrap();
        rb.apply(ca).unwrap();
        let winner = alice.peer_id().min(bob.peer_id());
        assert_eq!(ra.task(&task).unwrap().claimed_by, Some(winner));
        assert_eq!(ra, rb);
    }
}

#[test]
fn add_wins_over_a_concurrent_remove() {
    let (alice, bob) = (&ids()[0], &ids()[1]);
    let mut a = TaskList::new(list_id(), memo_check());
    let add = a.apply_own(
        alice,
        OpKind::Add {
            title: "x".into(),
            description: String::new(),
        },
        0,
    );
    let task = add.op.id;
    let mut b = a.clone();
    let observed = a.observed_tags(&task);
    let rm = a.apply_own(alice, OpKind::Remove { task, observed }, 0);
    assert!(a.task(&task).is_none());
    let restore = b.apply_own(bob, OpKind::Restore { task }, 0);
    a.apply(restore).unwrap();
    b.apply(rm).unwrap();
    assert!(a.task(&task).is_some(), "the concurrent restore wins");
    assert_eq!(a, b);
    // A remove that has seen the restore removes it for good.
    let observed = a.observed_tags(&task);
    assert_eq!(observed.len(), 1);
    a.apply_own(alice, OpKind::Remove { task, observed }, 0);
    assert!(a.task(&task).is_none());
}

#[test]
fn unsigned_wrongly_signed_foreign_and_equivocating_ops_are_refused() {
    let (alice, mallory) = (&ids()[0], &ids()[2]);
    let mut a = TaskList::new(list_id(), Default::default());
    let op = a.make_op(
        alice,
        OpKind::Add {
            title: "x".into(),
            description: String::new(),
        },
        0,
    );
    // Unsigned.
    let mut unsigned = op.clone();
    unsigned.signature = x0x_proto::identity::Signature([0; 64]);
    assert_eq!(a.apply(unsigned), Err(OpError::BadSignature));
    // Signed by someone else than its author.
    let forged = SignedOp {
        signature: mallory.sign(&op.op.signing_bytes()),
        ..op.clone()
    };
    assert_eq!(a.apply(forged), Err(OpError::BadSignature));
    // Tampered after signing.
    let mut tampered = op.clone();
    tampered.op.lamport += 1;
    assert_eq!(a.apply(tampered), Err(OpError::BadSignature));
    // For another list.
    let mut other = TaskList::new(TopicId::new("other"), Default::default());
    assert_eq!(other.apply(op.clone()), Err(OpError::WrongList));
    // Oversized text.
    let big = a.make_op(
        alice,
        OpKind::Add {
            title: "x".repeat(2000),
            description: String::new(),
        },
        0,
    );
    assert!(matches!(a.apply(big), Err(OpError::Invalid(_))));
    // Genuine: applied once, then a duplicate.
    assert_eq!(a.apply(op.clone()), Ok(true));
    assert_eq!(a.apply(op.clone()), Ok(false));
    // The author signs a different op under the same id: refused.
    let mut equivocation = op.op.clone();
    equivocation.kind = OpKind::Add {
        title: "y".into(),
        description: String::new(),
    };
    assert_eq!(
        a.apply(SignedOp::sign(alice, equivocation)),
        Err(OpError::Conflict)
    );
    assert_eq!(a.conflicts(), 1);
    assert_eq!(a.len(), 1);
}

#[test]
fn version_vectors_count_contiguous_prefixes_and_deltas_are_exact() {
    let alice = &ids()[0];
    let mut src = TaskList::new(list_id(), memo_check());
    let ops: Vec<SignedOp> = (0..10)
        .map(|i| {
            src.apply_own(
                alice,
                OpKind::Add {
                    title: format!("{i}"),
                    description: String::new(),
                },
                0,
            )
        })
        .collect();
    let mut dst = TaskList::new(list_id(), memo_check());
    for i in [0, 1, 2, 5, 6] {
        dst.apply(ops[i].clone()).unwrap();
    }
    assert_eq!(dst.version_vector().get(&alice.peer_id()), 3);
    let missing: Vec<u64> = src
        .ops_missing(dst.version_vector())
        .map(|o| o.op.id.counter)
        .collect();
    assert_eq!(missing, (4..=10).collect::<Vec<_>>());
    for op in src
        .ops_missing(dst.version_vector())
        .cloned()
        .collect::<Vec<_>>()
    {
        dst.apply(op).unwrap();
    }
    assert_eq!(dst, src);
    assert_eq!(src.ops_missing(dst.version_vector()).count(), 0);
}

#[test]
fn task_ids_print_and_parse() {
    let id = OpId {
        author: peer(0),
        counter: 42,
    };
    let s = id.to_string();
    assert_eq!(s.parse::<OpId>().unwrap(), id);
    assert!("nope".parse::<OpId>().is_err());
    assert!(format!("{}-x", &s[..64]).parse::<OpId>().is_err());
}

// ------------------------------------------------------------ sync machine

fn drain(m: &mut TaskSync) -> Vec<TaskOutput> {
    let mut v = vec![];
    while let Some(o) = m.poll() {
        v.push(o);
    }
    v
}

#[test]
fn local_edits_are_checked_batched_and_published() {
    let t0 = Instant::now();
    let clock = WallClock::new(t0, 1_700_000_000_000);
    let mut m = TaskSync::new(ids()[0].clone(), TaskSyncConfig::default(), clock, 1);
    let l = list_id();
    assert_eq!(m.add(&l, "x", "", t0), Err(TaskError::UnknownList));
    m.open(l, t0);
    let t = m.add(&l, "write tests", "", t0).unwrap();
    m.claim(&l, t, t0).unwrap();
    assert!(matches!(
        m.claim(&l, t, t0),
        Err(TaskError::AlreadyTaken {
            status: Status::Claimed,
            ..
        })
    ));
    m.done(&l, t, t0).unwrap();
    assert!(matches!(
        m.done(&l, t, t0),
        Err(TaskError::AlreadyTaken {
            status: Status::Done,
            ..
        })
    ));
    assert!(matches!(
        m.claim(&l, t, t0),
        Err(TaskError::AlreadyTaken {
            status: Status::Done,
            ..
        })
    ));
    let view = &m.tasks(&l)[0];
    assert_eq!(
        (view.status, view.claimed_by),
        (Status::Done, Some(ids()[0].peer_id()))
    );
    drain(&mut m);
    m.handle_timer(t0 + Duration::from_millis(60));
    let published: Vec<_> = drain(&mut m)
        .into_iter()
        .filter_map(|o| match o {
            Output::Publish { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(published.len(), 1, "three edits, one batch");
    let batch: TaskBatch = postcard::from_bytes(&published[0]).unwrap();
    assert_eq!(batch.ops.len(), 3);

    // Another agent applies the batch; garbage is counted, not applied.
    let mut other = TaskSync::new(ids()[1].clone(), TaskSyncConfig::default(), clock, 2);
    other.open(l, t0);
    other.handle_published(l, &published[0], t0);
    other.handle_published(l, b"\x01\xff\xff", t0);
    assert_eq!(other.tasks(&l), m.tasks(&l));
    assert_eq!(other.stats().applied, 3);
    assert_eq!(other.stats().malformed, 1);
}

#[test]
fn anti_entropy_sends_only_the_missing_operations_both_ways() {
    let t0 = Instant::now();
    let clock = WallClock::new(t0, 1_700_000_000_000);
    let l = list_id();
    let mut a = TaskSync::new(ids()[0].clone(), TaskSyncConfig::default(), clock, 1);
    let mut b = TaskSync::new(ids()[1].clone(), TaskSyncConfig::default(), clock, 2);
    a.open(l, t0);
    b.open(l, t0);
    for i in 0..50 {
        a.add(&l, &format!("a{i}"), "", t0).unwrap();
    }
    for i in 0..20 {
        b.add(&l, &format!("b{i}"), "", t0).unwrap();
    }
    drain(&mut a);
    drain(&mut b);
    // Exchange until quiet.
    a.add_peer(l, ids()[1].peer_id(), t0);
    let mut rounds = 0;
    loop {
        let mut moved = false;
        for (from, to) in [(0, 1), (1, 0)] {
            let (src, dst) = if from == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            let sender = ids()[from].peer_id();
            for o in drain(src) {
                if let Output::Send { message, .. } = o {
                    dst.handle(sender, message, t0);
                    moved = true;
                }
            }
            let _ = to;
        }
        rounds += 1;
        if !moved {
            break;
        }
    }
    assert_eq!(a.list(&l), b.list(&l));
    assert_eq!(a.stats().sync_ops_sent, 50);
    assert_eq!(b.stats().sync_ops_sent, 20);
    assert!(rounds <= 4, "{rounds} rounds");
}

// ------------------------------------------------------------- persistence

#[test]
fn store_round_trips_atomically_and_reverifies_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = TaskStore::new(dir.path().join("state")).unwrap();
    let l = list_id();
    assert!(store.load(l, memo_check()).unwrap().is_none());
    let mut r = TaskList::new(l, memo_check());
    for i in 0..30 {
        r.apply_own(
            &ids()[i % 3],
            OpKind::Add {
                title: format!("{i}"),
                description: String::new(),
            },
            0,
        );
    }
    let t = r.tasks()[0].id;
    r.apply_own(&ids()[1], OpKind::Claim { task: t }, 0);
    store.save(&r).unwrap();
    store.save(&r).unwrap();
    // Only the final file: no temporary left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(store.lists().unwrap(), vec![l]);
    let (back, report) = store.load(l, memo_check()).unwrap().unwrap();
    assert_eq!(back, r);
    assert_eq!(
        report,
        LoadReport {
            ops: 31,
            rejected: 0
        }
    );
    // A restarted agent continues its counters where it left off.
    let next = back.make_op(&ids()[1], OpKind::Done { task: t }, 0);
    assert_eq!(next.op.id.counter, 12);

    // A tampered file: the altered operation is refused on load.
    let path = store.path(&l);
    let mut bytes = std::fs::read(&path).unwrap();
    let pos = bytes.windows(2).rposition(|w| w == b"29").unwrap();
    bytes[pos] = b'X';
    std::fs::write(&path, &bytes).unwrap();
    let (_, report) = store.load(l, memo_check()).unwrap().unwrap();
    assert_eq!(report.rejected, 1);
    // A wrong version and garbage are errors, not panics.
    bytes[8] = 99;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        store.load(l, memo_check()),
        Err(StoreError::Version { version: 99, .. })
    ));
    std::fs::write(&path, b"X0XTASKS\x01short").unwrap();
    assert!(matches!(
        store.load(l, memo_check()),
        Err(StoreError::Corrupt { .. })
    ));
}

proptest! {
    /// Random bytes never panic the batch, message or store decoders.
    #[test]
    fn random_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let t0 = Instant::now();
        let mut m = TaskSync::new(ids()[0].clone(), TaskSyncConfig::default(), WallClock::new(t0, 0), 1);
        m.open(list_id(), t0);
        m.handle_published(list_id(), &bytes, t0);
        if let Ok(msg) = postcard::from_bytes::<TaskMessage>(&bytes) {
            m.handle(ids()[1].peer_id(), msg, t0);
        }
        let dir = std::env::temp_dir();
        let _ = super::store::TaskStore::new(&dir).map(|_| ());
        let mut framed = STORE_MAGIC.to_vec();
        framed.push(1);
        framed.extend_from_slice(list_id().as_bytes());
        framed.extend_from_slice(&bytes);
        let _ = store_decode(&framed);
    }
}

fn store_decode(bytes: &[u8]) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().unwrap();
    let store = TaskStore::new(dir.path()).unwrap();
    std::fs::write(store.path(&list_id()), bytes).unwrap();
    store.load(list_id(), memo_check()).map(|_| ())
}

use super::store::STORE_MAGIC;
