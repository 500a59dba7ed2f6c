'use strict';
// Fixed GC-heavy work for `cargo xtask bench --workload gc` (single thread):
// each unit handles 2,000 "requests" that replace entries of a fixed-size
// cache: young GCs all the time, a full GC every few dozen units, nothing
// that grows. Arguments and output: harness.js.

const CACHE_SIZE = 60000;
const cache = new Array(CACHE_SIZE).fill(null);
let next = 0;

function unit(u) {
  let sum = 0;
  for (let i = 0; i < 2000; i++) {
    const entry = { id: u * 2000 + i, name: 'item-' + i, values: new Array(16).fill(i) };
    cache[next] = entry;
    next = (next + 1) % CACHE_SIZE;
    sum += entry.values.length;
  }
  return sum;
}

require('./harness')(1000, unit);
