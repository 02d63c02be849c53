//! The inference worker pool: a fixed number of blocking threads fed by a
//! bounded queue. A job that finds the queue full is refused at once (the
//! server answers 503), so memory never grows with the load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The queue is full.
#[derive(Debug)]
pub struct Busy;

pub struct WorkerPool {
    tx: SyncSender<Job>,
    in_flight: Arc<AtomicUsize>,
    pub workers: usize,
    pub queue_depth: usize,
}

impl WorkerPool {
    /// `workers` threads; at most `queue_depth` jobs wait for a free one.
    pub fn new(workers: usize, queue_depth: usize) -> std::io::Result<WorkerPool> {
        let (tx, rx) = sync_channel::<Job>(queue_depth);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            std::thread::Builder::new()
                .name(format!("infer-{i}"))
                .spawn(move || loop {
                    let job = {
                        let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                        guard.recv()
                    };
                    match job {
                        // A panic in a job must not kill the worker.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(_) => return, // the pool was dropped
                    }
                })?;
        }
        Ok(WorkerPool {
            tx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            workers: workers.max(1),
            queue_depth,
        })
    }

    /// Jobs queued or running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Queue `f`; its result arrives on the returned receiver.
    pub fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<R>, Busy> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let counter = self.in_flight.clone();
        counter.fetch_add(1, Ordering::Relaxed);
        let c2 = counter.clone();
        let job: Job = Box::new(move || {
            struct Dec(Arc<AtomicUsize>);
            impl Drop for Dec {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::Relaxed);
                }
            }
            let _dec = Dec(c2);
            let _ = done.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                // The job was dropped unrun (its guard never existed): undo the count.
                counter.fetch_sub(1, Ordering::Relaxed);
                Err(Busy)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses() {
        let pool = WorkerPool::new(1, 1).unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Arc::new(Mutex::new(go_rx));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let wait = std::time::Duration::from_secs(5);
        let mut accepted = Vec::new();
        let mut refused = 0;
        for k in 0..5 {
            let (g, started) = (go_rx.clone(), started_tx.clone());
            match pool.submit(move || {
                let _ = started.send(());
                let _ = g.lock().unwrap().recv_timeout(wait);
                1
            }) {
                Ok(rx) => accepted.push(rx),
                Err(Busy) => refused += 1,
            }
            if k == 0 {
                // The worker has taken the first job: the queue is empty again.
                started_rx
                    .recv_timeout(wait)
                    .expect("the first job started");
            }
        }
        // One running, one queued.
        assert_eq!(accepted.len(), 2);
        assert_eq!(refused, 3);
        for _ in 0..2 {
            go_tx.send(()).unwrap();
        }
        for rx in accepted {
            assert_eq!(rx.blocking_recv().unwrap(), 1);
        }
        let deadline = std::time::Instant::now() + wait;
        while pool.in_flight() != 0 {
            assert!(std::time::Instant::now() < deadline, "still in flight");
            std::thread::yield_now();
        }
    }
}
