'use strict';
// Demo workload for `cargo xtask demo`: a CPU-bound Node process with a few
// clearly named hot functions, a worker thread named `demo-worker` with its own
// hot loop, and a little timer activity on the event loop. No dependencies;
// runs about 11 s and exits.
//
//   node xtask/demo/workload.js [seconds]

const crypto = require('crypto');
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');

const SECONDS = Number(process.argv[2]) || 11;

// ---------------------------------------------------------------- worker ----

function sieveOfEratosthenes(limit) {
  const composite = new Uint8Array(limit + 1);
  let count = 0;
  for (let i = 2; i <= limit; i++) {
    if (composite[i]) continue;
    count++;
    for (let j = i * i; j <= limit; j += i) composite[j] = 1;
  }
  return count;
}

function collatzLengths(from, to) {
  let longest = 0;
  for (let n = from; n < to; n++) {
    let x = n;
    let steps = 0;
    while (x !== 1) {
      x = x % 2 === 0 ? x / 2 : 3 * x + 1;
      steps++;
    }
    if (steps > longest) longest = steps;
  }
  return longest;
}

function workerHotLoop(seconds) {
  const end = Date.now() + seconds * 1000;
  let primes = 0;
  let longest = 0;
  let rounds = 0;
  while (Date.now() < end) {
    primes += sieveOfEratosthenes(200000);
    longest = Math.max(longest, collatzLengths(1 + rounds * 1000, 1 + (rounds + 1) * 1000));
    rounds++;
  }
  return { rounds, primes, longest };
}

if (!isMainThread) {
  parentPort.postMessage(workerHotLoop(workerData.seconds));
  return;
}

// ----------------------------------------------------------- main thread ----

function fibonacci(n) {
  return n < 2 ? n : fibonacci(n - 1) + fibonacci(n - 2);
}

function parseRecords(count, seed) {
  const records = [];
  for (let i = 0; i < count; i++) {
    records.push({
      id: seed * 100000 + i,
      user: { name: `user${(i * 7) % 1000}`, email: `user${i}@example.com` },
      items: [i % 5, i % 7, i % 11].map((k) => ({ sku: `SKU-${k}`, qty: k + 1 })),
      createdAt: new Date(1700000000000 + i * 60000).toISOString(),
    });
  }
  const text = JSON.stringify(records);
  const parsed = JSON.parse(text);
  let quantity = 0;
  for (const r of parsed) for (const item of r.items) quantity += item.qty;
  return quantity + text.length;
}

function hashPasswords(count, seed) {
  let digest = '';
  for (let i = 0; i < count; i++) {
    const salt = `salt-${seed}-${i}`;
    let h = `password-${i}`;
    for (let round = 0; round < 20; round++) {
      h = crypto.createHash('sha256').update(salt).update(h).digest('hex');
    }
    digest = h;
  }
  return digest.length + digest.charCodeAt(0);
}

function renderTemplate(rows, seed) {
  let html = '<table>\n';
  for (let i = 0; i < rows; i++) {
    html += '  <tr class="' + (i % 2 ? 'odd' : 'even') + '">';
    html += `<td>${i}</td><td>${(seed * 7919 + i).toString(16)}</td><td>${'*'.repeat(i % 13)}</td>`;
    html += '</tr>\n';
  }
  html += '</table>\n';
  return html.length;
}

const LOG_LINE = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)\.\d{3}Z \[(INFO|WARN|ERROR)\] (\w+): (.*) in (\d+)ms$/;

function matchLogLines(count, seed) {
  const levels = ['INFO', 'WARN', 'ERROR'];
  let slow = 0;
  for (let i = 0; i < count; i++) {
    const line = `2024-05-0${(i % 9) + 1}T12:34:56.789Z [${levels[(i + seed) % 3]}] svc${i % 17}: request /api/v1/items/${i} done in ${(i * 37) % 500}ms`;
    const m = LOG_LINE.exec(line);
    if (m && m[3] !== 'INFO' && Number(m[6]) > 250) slow++;
  }
  return slow;
}

// A little event-loop activity: a timer that does some small work.
let ticks = 0;
function onTick() {
  ticks++;
  renderTemplate(50, ticks);
}
const ticker = setInterval(onTick, 25);

const worker = new Worker(__filename, { name: 'demo-worker', workerData: { seconds: SECONDS - 1 } });
const workerDone = new Promise((resolve, reject) => {
  worker.once('message', resolve);
  worker.once('error', reject);
});

const started = Date.now();
let batches = 0;
let checksum = 0;

// One batch of every hot function, then yield to the event loop. The calls go
// through one call site with five targets, so the optimizing compiler does not
// inline them into runBatch and every function keeps its own frame.
const TASKS = [
  [fibonacci, 27],
  [parseRecords, 1500],
  [hashPasswords, 120],
  [renderTemplate, 12000],
  [matchLogLines, 6000],
];

function runBatch() {
  for (const [task, size] of TASKS) checksum = (checksum * 31 + task(size, batches)) | 0;
  batches++;
  if (Date.now() - started < SECONDS * 1000) {
    setTimeout(runBatch, 1);
  } else {
    finish();
  }
}

async function finish() {
  clearInterval(ticker);
  const w = await workerDone;
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  console.log(
    `demo workload done in ${secs} s: ${batches} batches, ${ticks} timer ticks, checksum ${checksum >>> 0}; ` +
      `demo-worker: ${w.rounds} rounds, ${w.primes} primes`
  );
}

console.log(`demo workload pid ${process.pid}: running ${SECONDS} s (main thread + worker "demo-worker")`);
setTimeout(runBatch, 0);
