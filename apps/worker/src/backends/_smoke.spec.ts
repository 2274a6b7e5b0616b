import { it } from 'vitest';
import { SimulatorBackend } from './simulator.backend';
it('smoke', async () => {
  const b = new SimulatorBackend();
  const dep = { id: 'x#0', modelName: 'x', provider: 'simulator' as const, upstreamModel: 'llama', ttftMs: 0, itlMs: 0 };
  const req = { deployment: dep, params: { prompt: ['hi there', 'b'], n: 2, logprobs: 2, echo: true, max_tokens: 5 }, signal: new AbortController().signal, deadline: Date.now() + 10000 };
  console.log(JSON.stringify(await b.complete(req), null, 1));
  for await (const e of b.stream(req)) console.log(JSON.stringify(e));
});
