'use strict';
// A loopback HTTP server with thousands of distinct JS functions, for
// `cargo xtask soak`: every request runs a handful of them, so a long
// recording meets many SharedFunctionInfos (and GC moving them).
//
//   node server.js [--functions N]    prints `listening PORT`, serves until killed

const http = require('http');
const argv = process.argv.slice(2);
let count = 3000;
for (let i = 0; i < argv.length; i++) if (argv[i] === '--functions') count = Number(argv[++i]);

// Distinct source text per function: V8 keeps one SharedFunctionInfo each.
const handlers = [];
for (let i = 0; i < count; i++) {
  const body = `let acc = seed ^ ${i};\n` +
    `for (let k = 0; k < ${200 + (i % 50) * 10}; k++) acc = (acc * 31 + k + ${i}) | 0;\n` +
    `const o = { id: ${i}, acc, tag: 'h${i}' };\n` +
    `return JSON.stringify(o).length + acc;`;
  handlers.push(new Function('seed', `return function handler_${i}(seed) {\n${body}\n}`)());
}

const server = http.createServer((req, res) => {
  const n = Number(new URL(req.url, 'http://x').searchParams.get('n') || 0);
  let sum = 0;
  for (let j = 0; j < 8; j++) sum += handlers[(n * 8 + j) % handlers.length](n + j);
  res.end(String(sum));
});
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
