//! Endpoint choice: power of two choices on in-flight requests.
//!
//! Two distinct endpoints are drawn at random and the one with fewer
//! requests in flight wins (ties: the first draw, itself random). This is
//! Linkerd's P2C without the latency EWMA: it needs no tuning, spreads
//! sequential traffic evenly and steers around a slow endpoint because its
//! requests pile up. Counts are per address and shared by every authority
//! that resolves to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rand::Rng;

use crate::destination::Endpoint;

/// In-flight counters for every endpoint address in use.
#[derive(Debug, Default)]
pub struct Balancer {
    loads: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// Holds one in-flight slot on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer with no history.
    pub fn new() -> Self {
        Self::default()
    }

    fn load(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        if loads.len() > 4096 {
            // Forget idle endpoints that went away (bounded memory).
            loads.retain(|_, l| Arc::strong_count(l) > 1 || l.load(Ordering::Relaxed) > 0);
        }
        loads.entry(addr).or_default().clone()
    }

    /// Picks an endpoint and takes an in-flight slot on it; `None` when
    /// there are no endpoints.
    pub fn pick<'a>(&self, endpoints: &'a [Endpoint]) -> Option<(&'a Endpoint, InFlight)> {
        let chosen = match endpoints.len() {
            0 => return None,
            1 => &endpoints[0],
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (la, lb) = (
                    self.load(endpoints[a].address),
                    self.load(endpoints[b].address),
                );
                if lb.load(Ordering::Relaxed) < la.load(Ordering::Relaxed) {
                    &endpoints[b]
                } else {
                    &endpoints[a]
                }
            }
        };
        let load = self.load(chosen.address);
        load.fetch_add(1, Ordering::Relaxed);
        Some((chosen, InFlight(load)))
    }

    /// Requests in flight to an address (for tests and debugging).
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .map_or(0, |l| l.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            namespace: None,
            pod: None,
            service_account: None,
            meshed: false,
            identity: None,
        }
    }

    #[test]
    fn empty_and_single() {
        let b = Balancer::new();
        assert!(b.pick(&[]).is_none());
        let eps = [ep(1)];
        let (e, guard) = b.pick(&eps).unwrap();
        assert_eq!(e.address.port(), 1);
        assert_eq!(b.in_flight(e.address), 1);
        drop(guard);
        assert_eq!(b.in_flight(e.address), 0);
    }

    #[test]
    fn avoids_the_loaded_endpoint() {
        let b = Balancer::new();
        let eps = [ep(1), ep(2)];
        // Pin one request on port 1; with two endpoints P2C always compares
        // both, so every further pick goes to port 2 while it is lighter.
        let held: Vec<_> = (0..3).map(|_| b.pick(&eps[..1]).unwrap().1).collect();
        for _ in 0..20 {
            let (e, g) = b.pick(&eps).unwrap();
            assert_eq!(e.address.port(), 2);
            drop(g);
        }
        drop(held);
    }

    #[test]
    fn spreads_sequential_traffic() {
        let b = Balancer::new();
        let eps = [ep(1), ep(2), ep(3)];
        let mut seen = HashMap::new();
        for _ in 0..300 {
            let (e, _g) = b.pick(&eps).unwrap();
            *seen.entry(e.address.port()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.values().all(|n| *n > 50), "{seen:?}");
    }
}
