// The sim guest's output device (shared/driver/sim/output.ts): what a sync protection holds and
// when it lets it go, its bounds, a copy's term (releaseWhile), and a fenced copy that lets nothing out.
import t from 'tap';
import { OUTPUTS_HELD_MAX, OutputDevice } from '../shared/driver/sim/output.js';

t.test('held until the unit that produced them is released; past the bound the gate opens and says so', async (t) => {
  const d = new OutputDevice();
  d.hold();
  d.afterUnit(1, 0, 3, 7);
  d.afterUnit(2, 3, 5, 8);
  t.equal(d.heldCount, 5);
  t.equal(d.releaseThrough(1), 3, "unit 1's three replies");
  t.equal(d.heldCount, 2);
  let told = 0;
  d.onOverflow = (held) => (told = held);
  d.afterUnit(3, 5, 5 + OUTPUTS_HELD_MAX, 9);
  t.equal(told, OUTPUTS_HELD_MAX + 2, 'told how many were held');
  t.equal(d.heldCount, 0, 'all released');
  t.notOk(d.holding, 'async from here');
});

t.test('releaseWhile: nothing leaves while it does not hold; held, bounded, the oldest dropped', async (t) => {
  const d = new OutputDevice();
  let held = false;
  d.releaseWhile = () => held;
  d.afterUnit(1, 0, 4, 1);
  t.equal(d.released, 0);
  t.equal(d.heldCount, 4);
  d.afterUnit(2, 4, 4 + OUTPUTS_HELD_MAX, 2);
  t.equal(d.heldCount, OUTPUTS_HELD_MAX, 'bounded');
  t.equal(d.released, 0, 'none released past the bound either');
  held = true;
  t.equal(d.releaseThrough(2), OUTPUTS_HELD_MAX, 'released once it holds');
  t.equal(d.produced - d.released, 4, 'the four over the bound were dropped, never released');
  const last = d.releasedAfter(4 + OUTPUTS_HELD_MAX - 2, 10).packets;
  t.same(last.map((p) => p.sequence), [4 + OUTPUTS_HELD_MAX - 1], 'the newest kept');
});

t.test('dropHeld: a fenced copy drops what it holds and lets nothing out, ever', async (t) => {
  const d = new OutputDevice();
  d.hold();
  d.afterUnit(1, 0, 3, 1);
  t.equal(d.dropHeld(), 3);
  d.afterUnit(2, 3, 6, 2);
  d.openGate();
  d.hold();
  t.equal(d.releaseThrough(10), 0);
  t.equal(d.released, 0, 'nothing released');
  t.equal(d.heldCount, 0, 'nothing kept');
});
