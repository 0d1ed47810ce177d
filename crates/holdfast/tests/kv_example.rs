//! Runs `examples/kv.rs` (the key-value trial of issue 18: 16 tasks, mixed
//! PUT/GET/DEL, one-way audit messages, chaos proxy faults, a graceful
//! restart and a crash of the target) with 2,000 commands and checks its
//! verdict; and shows that its checker catches what it claims to: a
//! duplicate, a lost success, a misreported failure, a reordering.

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/kv.rs"]
mod kv;

use kv::{verify, Backend, Issued, Seen};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_example_under_faults_loses_duplicates_and_misreports_nothing() {
    let verdict = kv::run(kv::Config {
        commands: 2_000,
        seed: 18,
    })
    .await
    .expect("the run finishes");
    eprintln!("{verdict:?}");
    assert!(verdict.passed(), "{:#?}", verdict.problems);
    assert_eq!(verdict.commands, 2_000);
    assert_eq!(verdict.restarts, 2, "a graceful restart and a crash");
    assert_eq!(verdict.crashes, 1);
    assert!(verdict.faults >= 2, "the proxy hit open links: {verdict:?}");
    assert!(verdict.done > 1_000, "most commands answered: {verdict:?}");
    assert!(verdict.audits_delivered > 0, "{verdict:?}");
}

fn issued(task: u64, id: u64, seen: Seen) -> Issued {
    Issued {
        task,
        id,
        audit: false,
        retry_safe: false,
        seen,
    }
}

/// A backend that applied commands 1, 2, 3 (answers "OK") in that order.
fn backend() -> Backend {
    let mut b = Backend::default();
    for id in [1, 2, 3] {
        b.applied.push(id);
        b.answers.insert(id, vec!["OK".into()]);
    }
    b
}

#[test]
fn kv_checker_catches_every_kind_of_broken_promise() {
    let ok = |id| issued(0, id, Seen::Done("OK".into()));
    let good = [ok(1), ok(2), ok(3)];
    assert!(verify(&good, &backend()).passed());

    let mut dup = backend();
    dup.applied.push(3);
    assert!(!verify(&good, &dup).passed(), "a duplicate");
    // A retry-safe command may rightly run twice (re-issued after a
    // restart); the task's next command must still come after both.
    let mut safe = good.clone();
    safe[2].retry_safe = true;
    assert!(verify(&safe, &dup).passed());
    let mut early = backend();
    early.applied.insert(0, 2);
    safe[1].retry_safe = true;
    assert!(
        !verify(&safe, &early).passed(),
        "a re-run before the previous command"
    );

    let mut lost = backend();
    lost.applied.retain(|id| *id != 3);
    assert!(!verify(&good, &lost).passed(), "a lost success");

    let misreported = [ok(1), issued(0, 2, Seen::NotExecuted), ok(3)];
    assert!(!verify(&misreported, &backend()).passed(), "a misreport");

    let wrong_answer = [ok(1), issued(0, 2, Seen::Done("NONE".into())), ok(3)];
    assert!(
        !verify(&wrong_answer, &backend()).passed(),
        "a wrong answer"
    );

    let mut reordered = backend();
    reordered.applied.swap(0, 1);
    assert!(!verify(&good, &reordered).passed(), "a reordering");

    let doubt = [
        ok(1),
        issued(0, 2, Seen::InDoubt),
        issued(0, 4, Seen::InDoubt),
    ];
    let v = verify(&doubt, &backend());
    assert!(v.passed(), "in doubt either way is no problem: {v:?}");
    assert_eq!((v.in_doubt, v.in_doubt_applied), (2, 1));
}
