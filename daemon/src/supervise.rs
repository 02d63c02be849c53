//! Supervision of the daemon's long-lived background threads (the bundle
//! watcher, the search): the thread's body runs under `catch_unwind`; a
//! panic is logged, reported (counted in `/adaptation`), and the body is run
//! again after a short, growing pause. A body that returns ends the thread.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// The pause before the first restart; doubled after each panic, at most
/// [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Run `body` on a new thread named `name`, restarting it after every
/// panic; `on_panic(message)` is called for each one (before the restart).
pub fn spawn(
    name: &str,
    mut body: impl FnMut() + Send + 'static,
    on_panic: impl Fn(&str) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let label = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run(&label, &mut body, &on_panic))
}

/// The supervision loop itself (on the calling thread).
pub fn run(name: &str, body: &mut dyn FnMut(), on_panic: &dyn Fn(&str)) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match catch_unwind(AssertUnwindSafe(&mut *body)) {
            Ok(()) => return,
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                log::error!(
                    "the {name} thread panicked ({message}); restarting it in {:.1} s",
                    backoff.as_secs_f64()
                );
                on_panic(&message);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_panicking_body_is_restarted_and_reported_until_it_returns() {
        let runs = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let (r, s) = (runs.clone(), seen.clone());
        let h = spawn(
            "test",
            move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    panic!("boom {n}");
                }
            },
            move |m| s.lock().unwrap().push(m.to_string()),
        )
        .unwrap();
        h.join().expect("the supervisor itself never panics");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(*seen.lock().unwrap(), vec!["boom 0", "boom 1"]);
    }
}
