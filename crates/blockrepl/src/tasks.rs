//! Every task a resource spawns, counted, and one stop signal for all of them.
//!
//! [`Tasks::spawn`] and [`Tasks::spawn_blocking`] wrap the task so that a guard, dropped when
//! the task's future (or closure) is finished or dropped, decrements the count;
//! [`Tasks::wait`] returns once the count is zero: then no task of the resource is alive. The
//! stop signal ([`Tasks::stop`], [`Tasks::stopped`]) is a `watch` channel every long-running
//! loop selects on.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

#[derive(Debug)]
struct Inner {
    alive: AtomicUsize,
    idle: Notify,
}

/// Counts live tasks; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Tasks {
    inner: Arc<Inner>,
    stop_tx: Arc<watch::Sender<bool>>,
    stop_rx: watch::Receiver<bool>,
}

/// Held by a running task; its drop marks the task ended.
struct Alive(Arc<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        if self.0.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tasks {
    pub(crate) fn new() -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        Self {
            inner: Arc::new(Inner { alive: AtomicUsize::new(0), idle: Notify::new() }),
            stop_tx: Arc::new(stop_tx),
            stop_rx,
        }
    }

    fn enter(&self) -> Alive {
        self.inner.alive.fetch_add(1, Ordering::AcqRel);
        Alive(self.inner.clone())
    }

    /// Spawns a counted task.
    pub(crate) fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let alive = self.enter();
        tokio::spawn(async move {
            let _alive = alive;
            fut.await
        })
    }

    /// Runs a counted closure on the blocking pool.
    pub(crate) fn spawn_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> tokio::task::JoinHandle<R> {
        let alive = self.enter();
        tokio::task::spawn_blocking(move || {
            let _alive = alive;
            f()
        })
    }

    /// Tasks alive now.
    pub(crate) fn alive(&self) -> usize {
        self.inner.alive.load(Ordering::Acquire)
    }

    /// Asks every loop to stop.
    pub(crate) fn stop(&self) {
        self.stop_tx.send_replace(true);
    }

    /// Resolves once [`Tasks::stop`] has been called.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Resolves once no counted task is alive.
    pub(crate) async fn wait(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.alive() == 0 {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_once_every_task_ended() {
        let t = Tasks::new();
        let stop = t.stopped();
        let a = t.spawn(stop);
        let b = t.spawn_blocking(|| 7);
        assert_eq!(b.await.unwrap(), 7);
        assert_eq!(t.alive(), 1);
        t.stop();
        t.wait().await;
        assert_eq!(t.alive(), 0);
        assert!(a.is_finished());
    }
}
