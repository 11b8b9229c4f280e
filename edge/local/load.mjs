// Loads the edge function as CloudFront runs it: the very file the template
// deploys (edge/dist, see deployable.mjs), evaluated as a module whose `cloudfront` import is bound to a
// KeyValueStore the caller supplies. Used by the function's tests and by the
// local edge (server.mjs). Needs node --experimental-vm-modules.
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import vm from 'node:vm';
import { DEPLOYED } from './deployable.mjs';

/// The function's `handler`; its store's get(key) calls `lookup(key)`, whose
/// `undefined` is a missing key (KeyValueStore's get rejects then). Tests
/// may set the clock (`now`, ms) and the draws (`random`, as Math.random).
export async function loadHandler(lookup, { now, random } = {}) {
  const clock = now
    ? class extends Date {
      static now() {
        return now();
      }
    }
    : Date;
  const context = vm.createContext({ Date: clock, JSON, Number, console });
  if (random) {
    context.seeded = random;
    vm.runInContext('Math.random = seeded; delete globalThis.seeded;', context);
  }
  // The file declares `handler` without exporting it, as CloudFront wants;
  // the loader exports it to call it, and changes nothing else.
  const text = readFileSync(DEPLOYED, 'utf8') + '\nexport { handler };\n';
  const fn = new vm.SourceTextModule(text, { context });
  const cloudfront = new vm.SyntheticModule(
    ['default'],
    function () {
      this.setExport('default', {
        kvs: () => ({
          get: async (key) => {
            const value = lookup(key);
            if (value === undefined) {
              throw new Error(`KeyValueStore: key not found: ${key}`);
            }
            return value;
          },
        }),
      });
    },
    { context },
  );
  // CloudFront's crypto module: hashes and HMACs, nothing else.
  const crypto = new vm.SyntheticModule(
    ['default'],
    function () {
      this.setExport('default', { createHmac: (alg, key) => createHmac(alg, key) });
    },
    { context },
  );
  const modules = { cloudfront, crypto };
  await fn.link((specifier) => {
    if (!modules[specifier]) {
      throw new Error(`the edge function may import only 'cloudfront' and 'crypto', not '${specifier}'`);
    }
    return modules[specifier];
  });
  await fn.evaluate();
  return fn.namespace.handler;
}
