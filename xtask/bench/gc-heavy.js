'use strict';
// Fixed GC-heavy work for `cargo xtask bench --workload gc` (single thread).
//
//   node gc-heavy.js [--units N] [--wait-stdin]
//
// Each unit handles 2,000 "requests" that replace entries of a fixed-size
// cache: a young GC every few units, a full GC every few dozen, nothing
// that grows. Prints, as its last stdout line, the elapsed milliseconds of
// the work alone. With --wait-stdin it first prints `ready` and waits for a
// line on stdin, so a tracer can attach before the timed work starts.

const argv = process.argv.slice(2);
let units = 1000;
let waitStdin = false;
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--units') units = Number(argv[++i]);
  else if (argv[i] === '--wait-stdin') waitStdin = true;
  else {
    console.error(`unknown argument ${argv[i]}`);
    process.exit(2);
  }
}
if (!Number.isInteger(units) || units < 1) {
  console.error('--units must be a positive integer');
  process.exit(2);
}

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

function work() {
  const start = process.hrtime.bigint();
  let checksum = 0;
  for (let i = 0; i < units; i++) checksum = (checksum + unit(i)) | 0;
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  console.log(`units ${units} checksum ${checksum}`);
  console.log(ms.toFixed(1));
}

if (waitStdin) {
  let started = false;
  process.stdin.on('data', () => {
    if (started) return;
    started = true;
    process.stdin.destroy();
    work();
  });
  process.stdin.on('end', () => {
    if (!started) {
      console.error('stdin closed before the start line');
      process.exit(3);
    }
  });
  console.log('ready');
} else {
  work();
}
