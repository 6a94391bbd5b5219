//! Who has the testbed's hosts h1..hN and its registry while a test runs.
//!
//! The tests of every file run side by side in this one binary. Most add containers,
//! registrations and keys of their own project only, so they share the hosts (`Claim::shared`,
//! which `Testbed::get` takes). A few cut a host's link, kill a daemon or stop an sshd, which
//! every other test on the hosts would see; they have the hosts to themselves
//! (`Claim::exclusive`, taken by `Testbed::exclusive`). An exclusive claim waits for the shared
//! ones to end, and a shared claim waits while an exclusive one is held or waited for, so a
//! disruptive test is not starved by the stream of others. Claims end when dropped: a test
//! that fails (panics) lets go of its claim as it unwinds.
//!
//! Within one test, asking again gives the claim it already has: a test that builds two
//! `Testbed`s does not wait behind an exclusive claim that waits for it.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Shared,
    Exclusive,
}

#[derive(Debug)]
struct Held(Kind);

/// A test's claim on the testbed; released when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Claim(Arc<Held>);

struct State {
    shared: usize,
    exclusive: bool,
    exclusive_waiting: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    shared: 0,
    exclusive: false,
    exclusive_waiting: 0,
});
static CHANGED: Condvar = Condvar::new();

thread_local! {
    /// The claim of the test running on this thread (libtest runs each test on a thread of its
    /// own), while any clone of it lives.
    static CURRENT: RefCell<Weak<Held>> = const { RefCell::new(Weak::new()) };
}

/// A panicking test never leaves the state half-changed (each change is one statement), so a
/// poisoned lock is still right.
fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

impl Claim {
    /// Share the hosts with the other tests; waits while a test has (or waits for) them alone.
    pub fn shared() -> Claim {
        if let Some(held) = current() {
            return Claim(held);
        }
        let mut s = state();
        while s.exclusive || s.exclusive_waiting > 0 {
            s = CHANGED.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.shared += 1;
        drop(s);
        Claim::hold(Kind::Shared)
    }

    /// Have the hosts alone: waits until no other test holds them. Panics when this test
    /// already shares them (it would wait for itself).
    pub fn exclusive() -> Claim {
        if let Some(held) = current() {
            assert_eq!(
                held.0,
                Kind::Exclusive,
                "this test shares the testbed already; take Testbed::exclusive first"
            );
            return Claim(held);
        }
        let mut s = state();
        s.exclusive_waiting += 1;
        while s.exclusive || s.shared > 0 {
            s = CHANGED.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.exclusive_waiting -= 1;
        s.exclusive = true;
        drop(s);
        Claim::hold(Kind::Exclusive)
    }

    pub fn kind(&self) -> Kind {
        self.0.0
    }

    fn hold(kind: Kind) -> Claim {
        let held = Arc::new(Held(kind));
        CURRENT.with(|c| *c.borrow_mut() = Arc::downgrade(&held));
        Claim(held)
    }
}

fn current() -> Option<Arc<Held>> {
    CURRENT.with(|c| c.borrow().upgrade())
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut s = state();
        match self.0 {
            Kind::Shared => s.shared -= 1,
            Kind::Exclusive => s.exclusive = false,
        }
        drop(s);
        CHANGED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// The claims are process-wide, and the testbed tests of this binary take them too: these
    /// checks take their claims on threads of their own and look only at what those see.
    #[test]
    fn an_exclusive_claim_waits_for_shared_ones_and_holds_new_ones_back() {
        let shared = std::thread::spawn(Claim::shared).join().unwrap();
        assert_eq!(shared.kind(), Kind::Shared);
        let got = Arc::new(AtomicBool::new(false));
        let g = got.clone();
        let exclusive = std::thread::spawn(move || {
            let c = Claim::exclusive();
            g.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            drop(c);
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !got.load(Ordering::SeqCst),
            "exclusive while shared is held"
        );
        // A new shared claim now waits behind the waiting exclusive one.
        let late = std::thread::spawn({
            let got = got.clone();
            move || {
                let c = Claim::shared();
                assert!(
                    got.load(Ordering::SeqCst),
                    "shared before the waiting exclusive"
                );
                drop(c);
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(shared);
        exclusive.join().unwrap();
        late.join().unwrap();
    }

    #[test]
    fn asking_again_within_a_test_gives_the_claim_it_has() {
        std::thread::spawn(|| {
            let a = Claim::shared();
            let b = Claim::shared();
            assert!(Arc::ptr_eq(&a.0, &b.0));
            drop((a, b));
            // Both clones gone: the next claim is a new one, and may be exclusive.
            assert_eq!(Claim::exclusive().kind(), Kind::Exclusive);
        })
        .join()
        .unwrap();
    }
}
