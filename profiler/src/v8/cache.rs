//! A bounded, LRU-ish cache: two generations of hash maps. New entries go
//! into the young generation; when it is full (by count or weight) it becomes
//! the old generation and the previous old one is dropped. A hit in the old
//! generation moves the entry back to the young one. Memory stays below the
//! caps; lookups and inserts are O(1).

use std::collections::HashMap;
use std::hash::Hash;

pub struct GenCache<K, V> {
    young: HashMap<K, (V, usize)>,
    old: HashMap<K, (V, usize)>,
    young_weight: usize,
    old_weight: usize,
    /// Entries per generation.
    max_entries: usize,
    /// Weight per generation.
    max_weight: usize,
}

impl<K: Hash + Eq, V> GenCache<K, V> {
    /// At most `max_entries` entries and `max_weight` total weight overall.
    pub fn new(max_entries: usize, max_weight: usize) -> Self {
        GenCache {
            young: HashMap::new(),
            old: HashMap::new(),
            young_weight: 0,
            old_weight: 0,
            max_entries: (max_entries / 2).max(1),
            max_weight: (max_weight / 2).max(1),
        }
    }

    pub fn get(&mut self, key: &K) -> Option<&V>
    where
        K: Clone,
    {
        if self.young.contains_key(key) {
            return self.young.get(key).map(|(v, _)| v);
        }
        let (value, weight) = self.old.remove(key)?;
        self.old_weight -= weight;
        self.insert(key.clone(), value, weight);
        self.young.get(key).map(|(v, _)| v)
    }

    /// Inserts `value`; an entry heavier than a generation is not kept.
    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        if weight > self.max_weight {
            return;
        }
        if let Some((_, w)) = self.young.remove(&key) {
            self.young_weight -= w;
        }
        if self.young.len() >= self.max_entries || self.young_weight + weight > self.max_weight {
            self.old = std::mem::take(&mut self.young);
            self.old_weight = self.young_weight;
            self.young_weight = 0;
        }
        if let Some((_, w)) = self.old.remove(&key) {
            self.old_weight -= w;
        }
        self.young_weight += weight;
        self.young.insert(key, (value, weight));
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn weight(&self) -> usize {
        self.young_weight + self.old_weight
    }

    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
        self.young_weight = 0;
        self.old_weight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_entries_and_weight() {
        let mut c = GenCache::new(4, 1000);
        for i in 0..100u32 {
            c.insert(i, i, 1);
            assert!(c.len() <= 4);
        }
        assert_eq!(c.get(&99), Some(&99));
        assert_eq!(c.get(&0), None);
        // A recently used old entry survives the next rotation.
        let mut c = GenCache::new(4, 1000);
        c.insert(1, 1, 1);
        c.insert(2, 2, 1);
        c.insert(3, 3, 1); // rotates: {1,2} old
        assert_eq!(c.get(&1), Some(&1)); // back to young: {3,1}
        c.insert(4, 4, 1); // rotates: {3,1} old, {4} young
        assert_eq!(c.get(&1), Some(&1));
        assert_eq!(c.get(&2), None);
        let mut c = GenCache::new(100, 10);
        c.insert(1, 1, 4);
        c.insert(2, 2, 4);
        c.insert(3, 3, 100); // too heavy: dropped
        assert_eq!(c.get(&3), None);
        for i in 10..20 {
            c.insert(i, i, 3);
            assert!(c.weight() <= 10);
        }
        c.clear();
        assert_eq!(c.len(), 0);
    }
}
