// A watched process for `cargo xtask bench-watch`: every 20 ms one unit of
// work (JSON round trips of a small object: CPU and garbage, so the event
// loop turns and the GC runs), about 1-2 % of a core. The work is paced by
// the clock, so its CPU time over a window grows only with overhead.
//
//   node watch-target.js MARKER
'use strict';
const item = { id: 1, name: 'watch-target', tags: ['a', 'b', 'c'], nested: { x: 1, y: [1, 2, 3] } };
let sink = 0;
function unit() {
  for (let i = 0; i < 40; i++) sink += JSON.parse(JSON.stringify(item)).nested.y.length;
}
setInterval(unit, 20);
console.log(`ready ${process.pid}`);
