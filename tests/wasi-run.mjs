// Runs a wasm32-wasip1 test binary under Node's WASI: cargo's runner for `make wasm-test`
// (CARGO_TARGET_WASM32_WASIP1_RUNNER), so the core's tests also run compiled to wasm.
//     node tests/wasi-run.mjs BINARY.wasm [test args...]
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import { argv } from 'node:process';
const wasi = new WASI({ version: 'preview1', args: [argv[2], ...argv.slice(3)], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(argv[2]));
const imports = wasi.getImportObject();
// Should a test binary import host functions, they fail loudly if called.
imports.env = {};
for (const i of WebAssembly.Module.imports(module)) {
  if (i.module === 'env' && i.kind === 'function') {
    imports.env[i.name] = () => { throw new Error(`host function ${i.name} called in a test`); };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
process.exitCode = wasi.start(instance);
