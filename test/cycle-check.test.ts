// The import cycle check (`npm run cycles`, madge, run by `npm test` before tap): it covers every
// folder the compiler builds, and with the script's own flags it finds a cycle written with the
// `.js` specifiers NodeNext wants (a value import, a type-only import, a re-export through an
// index) and passes a tree without one. Without this, a check that resolved no import would pass
// on any tree.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const root = fileURLToPath(new URL('../../', import.meta.url));
const script = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.cycles;
const include = (JSON.parse(readFileSync(join(root, 'tsconfig.json'), 'utf8')) as { include: string[] }).include;
/** The top-level folders the compiler builds ("cli/**\/*.ts" -> "cli"). */
const folders = include.map((pattern) => pattern.split('/')[0]);
const words = script.split(' ').filter((w) => w !== '');
/** The script's flags: its words after `madge`, less the folders it names. */
const flags = words.slice(1).filter((w) => !folders.includes(w));

const dir = mkdtempSync(join(tmpdir(), 'vmm-cycles-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** Writes `files` (path -> text) into a fresh folder and runs madge on it with the script's flags. */
function madgeOn(name: string, files: Record<string, string>): { status: number | null; output: string } {
  const tree = join(dir, name);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(tree, path, '..'), { recursive: true });
    writeFileSync(join(tree, path), text);
  }
  const r = spawnSync(process.execPath, [join(root, 'node_modules/madge/bin/cli.js'), ...flags, tree], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

t.test('the script is madge --circular over every folder the compiler builds', async (t) => {
  t.equal(words[0], 'madge');
  t.ok(flags.includes('--circular'), script);
  t.same(
    folders.filter((f) => !words.includes(f)),
    [],
    'every folder of tsconfig.json include is checked',
  );
});

t.test('finds a cycle through .js specifiers, type-only imports and an index re-export', async (t) => {
  const { status, output } = madgeOn('cyclic', {
    'run.ts': "import { seriesOf } from './curve.js';\nexport const run = (): number => seriesOf({ n: 1 });\n",
    'curve.ts': "import type { Run } from './types/index.js';\nexport const seriesOf = (r: Run): number => r.n;\n",
    'types/index.ts': "export type { Run } from './run-types.js';\n",
    'types/run-types.ts': "import type { run } from '../run.js';\nexport interface Run { n: number; of?: typeof run }\n",
    'free.ts': "import { run } from './run.js';\nexport const free = run;\n",
  });
  t.equal(status, 1, output);
  t.match(output, /Found 1 circular dependency/);
  t.match(output, /curve\.ts > types\/index\.ts > types\/run-types\.ts > run\.ts|run\.ts > curve\.ts > types\/index\.ts > types\/run-types\.ts/);
  t.notMatch(output, /free\.ts/, 'a module that only imports into the cycle is not part of it');
});

t.test('passes a tree without a cycle', async (t) => {
  const { status, output } = madgeOn('acyclic', {
    'run.ts': "import { seriesOf } from './curve.js';\nimport type { Run } from './types.js';\nexport const run = (r: Run): number => seriesOf(r);\n",
    'curve.ts': "import type { Run } from './types.js';\nexport const seriesOf = (r: Run): number => r.n;\n",
    'types.ts': 'export interface Run { n: number }\n',
  });
  t.equal(status, 0, output);
  t.match(output, /No circular dependency found/);
});
