//! Decrypted chunks kept within a memory budget (least recently used out first), and one fetch
//! per chunk however many readers want it at once.

use dedupstore::Id;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};

/// Fetches, authenticates and decompresses one chunk.
pub type Fetch = Box<dyn Fn(&Id) -> Result<Vec<u8>, String> + Send + Sync>;

type Outcome = Option<Result<Arc<Vec<u8>>, String>>;

/// A fetch in progress: the readers that want the same chunk wait for it.
#[derive(Debug, Default)]
struct Pending {
    done: Mutex<Outcome>,
    cv: Condvar,
}

#[derive(Debug)]
enum Slot {
    Ready { data: Arc<Vec<u8>>, tick: u64 },
    Loading(Arc<Pending>),
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<Id, Slot>,
    /// ready chunks by last use
    lru: BTreeMap<u64, Id>,
    used: u64,
    tick: u64,
    fetches: u64,
}

/// The chunk cache.
pub struct ChunkCache {
    budget: u64,
    fetch: Fetch,
    state: Mutex<State>,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache").field("budget", &self.budget).finish_non_exhaustive()
    }
}

impl ChunkCache {
    /// A cache holding at most `budget` bytes of chunks (one chunk larger than the budget is
    /// still served, then dropped).
    pub fn new(budget: u64, fetch: Fetch) -> ChunkCache {
        ChunkCache { budget, fetch, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` is cached or being fetched.
    pub fn has(&self, id: &Id) -> bool {
        self.lock().slots.contains_key(id)
    }

    /// Bytes held, and fetches done so far.
    pub fn usage(&self) -> (u64, u64) {
        let s = self.lock();
        (s.used, s.fetches)
    }

    /// The chunk `id`, from the cache or fetched (once, whoever else asks meanwhile).
    pub fn get(&self, id: &Id) -> Result<Arc<Vec<u8>>, String> {
        let pending = {
            let mut s = self.lock();
            s.tick += 1;
            let tick = s.tick;
            match s.slots.get_mut(id) {
                Some(Slot::Ready { data, tick: t }) => {
                    let data = data.clone();
                    let old = std::mem::replace(t, tick);
                    s.lru.remove(&old);
                    s.lru.insert(tick, *id);
                    return Ok(data);
                }
                Some(Slot::Loading(p)) => Some(p.clone()),
                None => {
                    s.slots.insert(*id, Slot::Loading(Arc::new(Pending::default())));
                    s.fetches += 1;
                    None
                }
            }
        };
        if let Some(p) = pending {
            let mut done = p.done.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(r) = done.as_ref() {
                    return r.clone();
                }
                done = p.cv.wait(done).unwrap_or_else(|p| p.into_inner());
            }
        }
        let r = (self.fetch)(id).map(Arc::new);
        let mut s = self.lock();
        let Some(Slot::Loading(p)) = s.slots.remove(id) else {
            return r;
        };
        if let Ok(data) = &r {
            s.tick += 1;
            let tick = s.tick;
            s.used += data.len() as u64;
            s.slots.insert(*id, Slot::Ready { data: data.clone(), tick });
            s.lru.insert(tick, *id);
            // the oldest out first; the newest stays even alone over the budget only until the
            // next insertion
            while s.used > self.budget {
                let Some((_, old)) = s.lru.pop_first() else { break };
                if let Some(Slot::Ready { data, .. }) = s.slots.remove(&old) {
                    s.used -= data.len() as u64;
                }
            }
        }
        drop(s);
        *p.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
        p.cv.notify_all();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn counting(fetched: Arc<AtomicU64>, gate: Arc<(Mutex<bool>, Condvar)>) -> Fetch {
        Box::new(move |id: &Id| {
            fetched.fetch_add(1, Ordering::SeqCst);
            let (m, cv) = &*gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            if id.0[0] == 0xee {
                return Err("bad chunk".into());
            }
            Ok(vec![id.0[0]; 100])
        })
    }

    #[test]
    fn budget_evicts_least_recently_used() {
        let n = Arc::new(AtomicU64::new(0));
        let c = ChunkCache::new(250, counting(n.clone(), Arc::new((Mutex::new(true), Condvar::new()))));
        let (a, b, d) = (Id([1; 32]), Id([2; 32]), Id([3; 32]));
        assert_eq!(*c.get(&a).unwrap(), vec![1u8; 100]);
        c.get(&b).unwrap();
        c.get(&a).unwrap(); // a is now newer than b
        c.get(&d).unwrap(); // 300 > 250: b goes
        assert_eq!(n.load(Ordering::SeqCst), 3);
        assert!(c.has(&a) && !c.has(&b) && c.has(&d));
        assert_eq!(c.usage().0, 200);
        c.get(&b).unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 4, "an evicted chunk is fetched again");
        assert!(c.get(&Id([0xee; 32])).is_err());
        assert!(!c.has(&Id([0xee; 32])), "a failed fetch is not kept");
    }

    #[test]
    fn concurrent_readers_share_one_fetch() {
        let n = Arc::new(AtomicU64::new(0));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let c = Arc::new(ChunkCache::new(1 << 20, counting(n.clone(), gate.clone())));
        let id = Id([7; 32]);
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.get(&id).unwrap())
            })
            .collect();
        // every reader is waiting on the one fetch once the cache shows the chunk loading and
        // the fetch has started; then let it finish
        while n.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        for r in readers {
            assert_eq!(*r.join().unwrap(), vec![7u8; 100]);
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
