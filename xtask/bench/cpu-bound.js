'use strict';
// Fixed CPU-bound work for `cargo xtask bench` (single thread, no dependencies).
//
//   node cpu-bound.js [--units N] [--wait-stdin]
//
// Does N units of mixed work (recursive fib, JSON round trips, string
// building) and prints, as its last stdout line, the elapsed milliseconds of
// that work alone (not node's start-up). With --wait-stdin it first prints
// `ready` and waits for a line on stdin, so a profiler can attach before the
// timed work starts.

const argv = process.argv.slice(2);
let units = 25000;
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

function fib(n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

function jsonRoundTrip(seed) {
  const records = [];
  for (let i = 0; i < 150; i++) {
    records.push({
      id: seed * 1000 + i,
      name: `item-${seed}-${i}`,
      tags: [`a${i % 7}`, `b${i % 11}`, `c${(seed + i) % 13}`],
      price: ((i * 7919 + seed) % 10000) / 100,
      active: (i + seed) % 3 === 0,
    });
  }
  const text = JSON.stringify(records);
  const back = JSON.parse(text);
  let sum = text.length;
  for (const r of back) sum += r.tags.length + (r.active ? Math.floor(r.price) : 1);
  return sum;
}

function buildStrings(seed) {
  let html = '';
  for (let i = 0; i < 400; i++) {
    html += `<li class="row-${i & 7}" data-id="${(seed * 31 + i).toString(36)}">${i * seed}</li>`;
  }
  const parts = html.split('</li>');
  return parts.length + html.toUpperCase().indexOf('DATA') + html.replace(/row-(\d)/g, 'r$1').length;
}

function unit(i) {
  return fib(21) + jsonRoundTrip(i) + buildStrings(i);
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
