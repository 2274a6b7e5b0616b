import { type FakeUpstream, startFakeUpstream } from './fake-upstream';
import { type Deployment, upstreamDeployment, writeModelList } from './router-config';
import { Stack, type StackOptions } from './stack';

/** A fake upstream, a stack routed to it and one API key: what most e2e suites start from. */
export interface UpstreamStack {
  upstream: FakeUpstream;
  stack: Stack;
  key: string;
}

/**
 * Starts a fake upstream, then a stack whose router config lists `deployments(upstream.url)`
 * (by default model `up` on that upstream), then creates a key. What was started is stopped
 * again if a later step fails, since the suite's afterAll never sees it.
 */
export async function startUpstreamStack(
  label: string,
  opts: Omit<StackOptions, 'routerConfig'> = {},
  deployments: (upstreamUrl: string) => Deployment[] | Promise<Deployment[]> = (url) => [upstreamDeployment('up', url)],
): Promise<UpstreamStack> {
  const upstream = await startFakeUpstream();
  let stack: Stack | undefined;
  try {
    const routerConfig = writeModelList(...(await deployments(upstream.url)));
    stack = await Stack.start(label, { ...opts, routerConfig });
    return { upstream, stack, key: await stack.createKey() };
  } catch (err) {
    await stack?.stop();
    await upstream.close();
    throw err;
  }
}
