import { BackendError } from './backend.error';
import type { BackendRequest, BackendResult, LlmBackend, StreamEvent } from './llm-backend';
import { simulateChat, streamChat } from './simulator-chat';
import { SimulatorClock, type SimulatorClockOptions } from './simulator-clock';
import { simulateCompletion, streamCompletion } from './simulator-completion';
import { simulateEmbeddings } from './simulator-embedding';

export type SimulatorBackendOptions = SimulatorClockOptions;

/**
 * A model without a model, for demos and load tests, serving all three operations:
 * completions (simulator-completion.ts), chat (simulator-chat.ts) and embeddings
 * (simulator-embedding.ts). Deterministic: the same request gets the same answer, streamed
 * or not. `simulator/echo` repeats the prompt's (or the last user message's) words; any
 * other name produces seeded pseudo-random words. The deployment's `ttftMs` and `itlMs`
 * pace the output like a real server (time to first token, then inter-token latency). The
 * answer is generated lazily and in slices that yield to the event loop, so no request
 * size can block the worker or build its whole answer before the first chunk.
 */
export class SimulatorBackend implements LlmBackend {
  private readonly clock: SimulatorClock;

  constructor(options: SimulatorBackendOptions = {}) {
    this.clock = new SimulatorClock(options);
  }

  complete(req: BackendRequest): Promise<BackendResult> {
    switch (req.op) {
      case 'completion':
        return simulateCompletion(this.clock, req);
      case 'chat':
        return simulateChat(this.clock, req);
      case 'embedding':
        return simulateEmbeddings(this.clock, req);
    }
  }

  async *stream(req: BackendRequest): AsyncGenerator<StreamEvent> {
    switch (req.op) {
      case 'completion':
        yield* streamCompletion(this.clock, req);
        return;
      case 'chat':
        yield* streamChat(this.clock, req);
        return;
      case 'embedding':
        // The runner never streams embeddings; refuse rather than invent a stream shape.
        throw new BackendError(400, 'embeddings cannot be streamed', 'invalid_request_error', false, 'stream');
    }
  }
}
