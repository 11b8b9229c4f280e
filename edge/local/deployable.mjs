// What CloudFront runs: edge/viewer-request.js without its comment lines,
// indentation and blank lines (a function takes at most 10 KB of source,
// comments included). `node edge/local/deployable.mjs` writes it to
// edge/dist/viewer-request.js and inlines it in template.yaml; the
// function's tests check both are current, and the local edge and the
// tests run that very file.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const SOURCE = new URL('../viewer-request.js', import.meta.url);
export const DEPLOYED = new URL('../dist/viewer-request.js', import.meta.url);
const TEMPLATE = new URL('../../template.yaml', import.meta.url);

/// The source less what CloudFront need not hold. The function has no
/// template literal, so no string spans lines.
export function deployable(text) {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('//'));
  return lines.join('\n') + '\n';
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const code = deployable(readFileSync(SOURCE, 'utf8'));
  writeFileSync(DEPLOYED, code);
  const template = readFileSync(TEMPLATE, 'utf8');
  const start = template.indexOf('      FunctionCode: |\n') + '      FunctionCode: |\n'.length;
  const end = template.indexOf("\n\n  # The store's only writer");
  if (start < '      FunctionCode: |\n'.length || end < start) {
    throw new Error("template.yaml: EdgeBuyFunction's FunctionCode block not found");
  }
  const inline = code.trimEnd().split('\n').map((l) => `        ${l}`).join('\n');
  writeFileSync(TEMPLATE, template.slice(0, start) + inline + template.slice(end));
  console.log(`edge/dist/viewer-request.js: ${Buffer.byteLength(code)} bytes (CloudFront takes 10,240)`);
}
