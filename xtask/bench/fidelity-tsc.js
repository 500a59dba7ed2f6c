'use strict';
// `cargo xtask bench-fidelity`'s compiler workload: the TypeScript compiler
// type-checks rxjs's sources, what `tsc --noEmit -p rxjs/src/tsconfig.esm.json`
// does (parse, bind, check every file), through the compiler's API so one
// process can be told when to start.
//
//   node fidelity-tsc.js THIRDPARTY_DIR
//
// Prints `ready` once typescript is loaded, then on the stdin line `go` runs
// the check and prints `done N` (N diagnostics); on `exit` (or end of
// stdin) it exits normally, so that --cpu-prof writes its profile.

const path = require('path');
const readline = require('readline');

const dir = process.argv[2];
const ts = require(path.join(dir, 'node_modules/typescript'));
const project = path.join(dir, 'node_modules/rxjs/src/tsconfig.esm.json');

function check() {
  const config = ts.getParsedCommandLineOfConfigFile(project, { noEmit: true }, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
    },
  });
  const program = ts.createProgram({ rootNames: config.fileNames, options: config.options });
  return ts.getPreEmitDiagnostics(program).length;
}

console.log('ready');
readline.createInterface({ input: process.stdin })
  .on('line', (line) => {
    if (line === 'go') console.log(`done ${check()}`);
    else if (line === 'exit') process.exit(0);
  })
  .on('close', () => process.exit(0));
