// A big heap for `cargo xtask bench-heap`: a graph of a few million objects of
// several classes (trees, arrays, maps, closures, strings), written with
// v8.writeHeapSnapshot.   node heap-big.js OUT.heapsnapshot [SCALE]
'use strict';
const v8 = require('v8');

const [out, scaleArg] = process.argv.slice(2);
const scale = Number(scaleArg || 1);

class Order {
  constructor(id, customer) {
    this.id = id;
    this.customer = customer;
    this.lines = [];
    this.note = 'order-' + id;
  }
}
class Customer {
  constructor(id) {
    this.id = id;
    this.name = 'customer ' + id;
    this.orders = [];
    this.tags = new Set();
  }
}
class Line {
  constructor(order, sku, qty) {
    this.order = order;
    this.sku = sku;
    this.qty = qty;
  }
}

const customers = [];
const byId = new Map();
const handlers = [];
const n = Math.round(150000 * scale);
for (let c = 0; c < n; c++) {
  const customer = new Customer(c);
  customers.push(customer);
  byId.set('c' + c, customer);
  customer.tags.add(c % 7 === 0 ? 'vip' : 'std');
  for (let o = 0; o < 3; o++) {
    const order = new Order(c * 3 + o, customer);
    customer.orders.push(order);
    for (let l = 0; l < 3; l++) order.lines.push(new Line(order, 'sku-' + ((c + l) % 5000), l + 1));
  }
  if (c % 3 === 0) handlers.push(() => customer.id);
}
global.app = { customers, byId, handlers };
v8.writeHeapSnapshot(out);
console.log('wrote ' + out);
