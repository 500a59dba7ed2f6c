#!/usr/bin/env node
// The `nodeprof` command of the npm package: runs the binary of the
// platform package (@nodeprof/linux-x64) with the same arguments, and ends
// the way it ends (exit code or signal). Signals sent to this launcher are
// passed on, so Ctrl-C or SIGTERM stop a recording that still writes its files.
"use strict";

const { spawn } = require("child_process");

const platforms = { "linux x64": "@nodeprof/linux-x64" };

function binary() {
  const key = `${process.platform} ${process.arch}`;
  const pkg = platforms[key];
  if (!pkg) {
    fail(`no nodeprof binary for ${key}: nodeprof runs on Linux x86-64 (eBPF)`);
  }
  try {
    return require.resolve(`${pkg}/bin/nodeprof`);
  } catch {
    fail(
      `the package ${pkg} is not installed (an optional dependency of nodeprof): ` +
        `install it with \`npm install ${pkg}\`, or drop --no-optional / --omit=optional`
    );
  }
}

function fail(message) {
  process.stderr.write(`nodeprof: error: ${message}\n`);
  process.exit(1);
}

const bin = binary();
const args = process.argv.slice(2);

if (typeof process.execve === "function") {
  // Node 22.15+: become nodeprof, so pid, signals and exit status are its own.
  process.execve(bin, [bin, ...args], process.env);
}

const child = spawn(bin, args, { stdio: "inherit" });
const forwarded = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"];
const forward = (signal) => {
  // Ctrl-C in a terminal reaches the whole process group, nodeprof too:
  // send it once, not twice.
  if (signal === "SIGINT" && process.stdin.isTTY) return;
  child.kill(signal);
};
for (const signal of forwarded) process.on(signal, forward);
child.on("error", (e) => fail(`cannot run ${bin}: ${e.message}`));
child.on("exit", (code, signal) => {
  for (const s of forwarded) process.removeListener(s, forward);
  if (signal) {
    // End by the same signal, as the shell expects.
    process.kill(process.pid, signal);
    return;
  }
  process.exit(code);
});
