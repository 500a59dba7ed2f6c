'use strict';
// `cargo xtask bench-fidelity`'s HTTP workload: an express or fastify server
// on loopback with one realistic JSON route (a path parameter, a query
// string, a middleware/hook that sets a header, a response built from a
// small in-memory table), loaded by autocannon from another process.
//
//   node fidelity-server.js THIRDPARTY_DIR express|fastify
//
// Prints `ready PORT` once listening; on the stdin line `exit` (or end of
// stdin) it exits normally, so that --cpu-prof writes its profile.

const path = require('path');
const readline = require('readline');

const [dir, framework] = process.argv.slice(2);
const load = (name) => require(path.join(dir, 'node_modules', name));

const users = Array.from({ length: 500 }, (_, i) => ({
  id: i,
  name: `user${i}`,
  email: `user${i}@example.com`,
  roles: i % 7 === 0 ? ['admin', 'user'] : ['user'],
  orders: Array.from({ length: i % 12 }, (_, k) => ({ id: i * 100 + k, total: (i * 37 + k * 11) % 1000 })),
}));

function userView(id, fields) {
  const user = users[id % users.length];
  const total = user.orders.reduce((sum, o) => sum + o.total, 0);
  const view = { ...user, orderCount: user.orders.length, total, at: new Date(0).toISOString() };
  if (!fields) return view;
  return Object.fromEntries(fields.split(',').filter((f) => f in view).map((f) => [f, view[f]]));
}

function listening(port) {
  console.log(`ready ${port}`);
  readline.createInterface({ input: process.stdin })
    .on('line', (line) => line === 'exit' && process.exit(0))
    .on('close', () => process.exit(0));
}

if (framework === 'express') {
  const express = load('express');
  const app = express();
  app.use((req, res, next) => {
    res.set('x-request-start', String(Date.now()));
    next();
  });
  app.get('/users/:id', (req, res) => {
    res.json(userView(Number(req.params.id), req.query.fields));
  });
  const server = app.listen(0, '127.0.0.1', () => listening(server.address().port));
} else if (framework === 'fastify') {
  const app = load('fastify')();
  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-start', String(Date.now()));
  });
  app.get('/users/:id', async (req) => userView(Number(req.params.id), req.query.fields));
  app.listen({ port: 0, host: '127.0.0.1' }).then(() => listening(app.server.address().port));
} else {
  console.error(`unknown framework ${framework}`);
  process.exit(2);
}
