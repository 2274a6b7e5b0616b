import { startFakeUpstream } from '../../test/support/fake-upstream';

/**
 * The fake upstream in a process of its own (`npm run bench:floor`), so that the load
 * generator is alone in the bench process and does not bound what it measures. Sends its
 * port to the parent once it listens.
 */
void startFakeUpstream({ record: false }).then((upstream) => process.send?.(upstream.port));
