'use strict';
// A workload that leaves the CPU often: each unit does a little JS work and
// then hands a token to a Worker and waits for it back (Atomics.wait on
// both sides), two context switches per thread per unit, about a thousand a
// second. `cargo xtask bench --workload switch` measures what off-CPU
// tracing (one sched_switch hit per switch, a stack per target switch) costs.
const { Worker } = require('worker_threads');

const token = new Int32Array(new SharedArrayBuffer(8));
const worker = new Worker(
  `
  const { workerData } = require('worker_threads');
  const t = workerData;
  for (;;) {
    Atomics.wait(t, 0, 0);
    Atomics.store(t, 0, 0);
    Atomics.store(t, 1, 1);
    Atomics.notify(t, 1);
  }
  `,
  { eval: true, workerData: token },
);
worker.unref();

function work(i) {
  let acc = i;
  for (let k = 0; k < 80000; k++) acc = (acc * 31 + k) | 0;
  return acc;
}

function handOff() {
  Atomics.store(token, 0, 1);
  Atomics.notify(token, 0);
  Atomics.wait(token, 1, 0);
  Atomics.store(token, 1, 0);
}

function unit(i) {
  const r = work(i);
  handOff();
  return r;
}

require('./harness')(2000, unit);
