import type { Provider } from '@app/common';
import type { OnApplicationShutdown } from '@nestjs/common';
import type { LlmBackend } from './llm-backend';
import { OpenAICompatibleBackend } from './openai-compatible.backend';
import { SimulatorBackend } from './simulator.backend';

/** Maps a deployment's provider prefix to the backend that serves it (built by a factory provider). */
export class BackendRegistry implements OnApplicationShutdown {
  private readonly openai: OpenAICompatibleBackend;
  private readonly simulator = new SimulatorBackend();

  constructor(idleTimeoutMs: number) {
    this.openai = new OpenAICompatibleBackend({ idleTimeoutMs });
  }

  for(provider: Provider): LlmBackend {
    switch (provider) {
      case 'openai':
        return this.openai;
      case 'simulator':
        return this.simulator;
    }
  }

  async onApplicationShutdown(): Promise<void> {
    await this.openai.close();
  }
}
