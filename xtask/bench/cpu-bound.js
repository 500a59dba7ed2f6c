'use strict';
// Fixed CPU-bound work for `cargo xtask bench` (single thread): N units of
// mixed work (recursive fib, JSON round trips, string building). Arguments
// and output: harness.js.

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

require('./harness')(25000, unit);
