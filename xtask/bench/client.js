'use strict';
// Loopback load for server.js: sequential keep-alive requests for a bounded
// time, so the server stays busy but the machine keeps a core free.
//
//   node client.js PORT SECONDS
const http = require('http');
const [port, seconds] = process.argv.slice(2).map(Number);
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
const end = Date.now() + seconds * 1000;
let n = 0;
function next() {
  if (Date.now() >= end) { console.log(`requests ${n}`); agent.destroy(); return; }
  http.get({ host: '127.0.0.1', port, path: `/?n=${n++}`, agent }, (res) => {
    res.resume();
    res.on('end', next);
  }).on('error', (e) => { console.error(e.message); process.exit(1); });
}
for (let i = 0; i < 4; i++) next();
