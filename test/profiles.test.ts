import t from 'tap';
import { InvalidArgumentError } from '../shared/errors.js';
import { PROFILE_NAMES, PROFILES, resolveRates } from '../shared/driver/sim/profiles.js';

t.test('every profile resolves to in-range rates', async (t) => {
  for (const name of PROFILE_NAMES) {
    const rates = resolveRates(name);
    t.same(rates, PROFILES[name].rates, name);
  }
});

t.test('an override replaces one rate and is range-checked by name', async (t) => {
  t.equal(resolveRates('web', { packetsPerSec: 10 }).packetsPerSec, 10);
  t.throws(() => resolveRates('web', { busyFraction: 2 }), InvalidArgumentError);
  t.throws(() => resolveRates('web', { busyFraction: 2 }), /busyFraction=2 is out of range/);
  t.throws(() => resolveRates('web', { bogus: 1 } as never), /unknown workload rate 'bogus'/);
  t.throws(() => resolveRates('nope' as never), /unknown workload profile 'nope'/);
});
