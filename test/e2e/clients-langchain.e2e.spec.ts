import { AIMessageChunk, HumanMessage, SystemMessage } from '@langchain/core/messages';
import { tool } from '@langchain/core/tools';
import { concat } from '@langchain/core/utils/stream';
import { ChatOpenAI, OpenAI, OpenAIEmbeddings } from '@langchain/openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';

/**
 * LangChain JS (`@langchain/openai`) used the way its users use it, against a real stack
 * (gateway and worker processes, real Redis, simulator models): the gateway is just an
 * OpenAI `baseURL` and an Aqueduct token is the `apiKey`.
 */

/** The words of a text, whatever the spacing: the echo simulator repeats the prompt's words. */
function words(text: unknown): string[] {
  return String(text).split(/\s+/).filter(Boolean);
}

function norm(v: number[]): number {
  return Math.sqrt(v.reduce((s, x) => s + x * x, 0));
}

/** The error a rejected promise carries, to look at its class and fields (fails if it resolves). */
async function rejection(p: Promise<unknown>): Promise<Record<string, unknown>> {
  const err: unknown = await p.then(
    (v) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(v).slice(0, 300)}`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Error);
  return err as Record<string, unknown>;
}

const weather = tool(({ city }) => `sunny in ${city}`, {
  name: 'get_weather',
  description: 'The current weather in a city',
  schema: z.object({ city: z.string().describe('city name'), unit: z.enum(['c', 'f']).optional() }),
});

describe('LangChain JS against the gateway', () => {
  let stack: Stack;
  let key: string;
  let baseURL: string;
  /** `model` with the stack's URL and key; no retries, so an error surfaces at once. */
  const chat = (model: string, extra: ConstructorParameters<typeof ChatOpenAI>[0] = {}) =>
    new ChatOpenAI({ model, apiKey: key, configuration: { baseURL }, maxRetries: 0, ...extra });
  const embeddings = (model: string, extra: ConstructorParameters<typeof OpenAIEmbeddings>[0] = {}) =>
    new OpenAIEmbeddings({ model, apiKey: key, configuration: { baseURL }, maxRetries: 0, ...extra });

  beforeAll(async () => {
    stack = await Stack.start('clients-langchain', {
      workers: 2,
      routerConfig: writeModelList(
        simulatorDeployment('echo', 'echo', { itl_ms: 1 }),
        simulatorDeployment('lorem', 'lorem', { itl_ms: 1 }),
        simulatorDeployment('embed', 'lorem', {}, { mode: 'embedding' }),
      ),
    });
    key = await stack.createKey({ name: 'langchain' });
    baseURL = `${stack.baseUrl}/v1`;
  });

  afterAll(async () => {
    await stack?.stop();
  });

  describe('ChatOpenAI', () => {
    it('invoke: the echo model answers with the words of the last user message, with usage', async () => {
      const prompt = 'the quick brown fox jumps over the lazy dog';
      const msg = await chat('echo').invoke([
        new SystemMessage('You are a parrot.'),
        new HumanMessage('an earlier question'),
        new HumanMessage(prompt),
      ]);
      expect(msg.content).toBeTypeOf('string');
      expect(words(msg.content)).toEqual(words(prompt));
      expect(msg.response_metadata.finish_reason).toBe('stop');
      expect(msg.id).toMatch(/^chatcmpl-/);
      expect(msg.tool_calls).toEqual([]);
      const usage = msg.usage_metadata;
      expect(usage?.input_tokens).toBeGreaterThan(0);
      expect(usage?.output_tokens).toBe(words(prompt).length);
      expect(usage?.total_tokens).toBe((usage?.input_tokens ?? 0) + (usage?.output_tokens ?? 0));
    });

    it('stream: several chunks that add up to the same answer, usage in the last one', async () => {
      const prompt = 'alpha beta gamma delta epsilon zeta eta theta';
      const chunks: AIMessageChunk[] = [];
      for await (const chunk of await chat('echo').stream(prompt)) {
        chunks.push(chunk);
      }
      expect(chunks.length).toBeGreaterThan(words(prompt).length / 2);
      const whole = chunks.reduce((a, b) => concat(a, b));
      expect(words(whole.content)).toEqual(words(prompt));
      expect(new Set(chunks.map((c) => c.id).filter(Boolean)).size).toBe(1);
      // streamUsage is on by default: ChatOpenAI asks for stream_options.include_usage.
      expect(whole.usage_metadata?.output_tokens).toBe(words(prompt).length);
      expect(whole.usage_metadata?.input_tokens).toBeGreaterThan(0);
      expect(whole.response_metadata.finish_reason).toBe('stop');
      // The same request without streaming gives the same text.
      const once = await chat('echo').invoke(prompt);
      expect(once.content).toBe(whole.content);
    });

    it('honours maxTokens: a lorem answer cut at 3 tokens ends with finish_reason length', async () => {
      const msg = await chat('lorem', { maxTokens: 3 }).invoke('tell me a long story');
      expect(words(msg.content).length).toBeGreaterThan(0);
      expect(words(msg.content).length).toBeLessThanOrEqual(3);
      expect(msg.usage_metadata?.output_tokens).toBe(3);
      expect(msg.response_metadata.finish_reason).toBe('length');
    });

    it('bindTools with a forced tool_choice: one tool call to that tool with parsed args', async () => {
      const model = chat('echo').bindTools([weather], { tool_choice: 'get_weather' });
      const msg = await model.invoke('What is the weather in Paris?');
      expect(msg.tool_calls).toHaveLength(1);
      const call = msg.tool_calls?.[0];
      expect(call?.name).toBe('get_weather');
      expect(call?.id).toEqual(expect.any(String));
      // One value of each property's type: the string, and the enum's first value.
      expect(call?.args).toEqual({ city: expect.any(String), unit: 'c' });
      expect(msg.invalid_tool_calls ?? []).toEqual([]);
      expect(msg.response_metadata.finish_reason).toBe('tool_calls');
      // The raw OpenAI tool call holds the same arguments, as a JSON string.
      const rawCalls = msg.additional_kwargs.tool_calls ?? [];
      expect(rawCalls).toHaveLength(1);
      expect(JSON.parse(rawCalls[0]?.function.arguments ?? 'null')).toEqual(call?.args);
    });

    it('streams a forced tool call as indexed deltas that LangChain reassembles', async () => {
      const model = chat('echo').bindTools([weather], { tool_choice: 'get_weather' });
      let whole: AIMessageChunk | undefined;
      let chunks = 0;
      for await (const chunk of await model.stream('Weather in Oslo?')) {
        chunks += 1;
        whole = whole === undefined ? chunk : concat(whole, chunk);
      }
      expect(chunks).toBeGreaterThan(1);
      expect(whole?.tool_calls).toHaveLength(1);
      expect(whole?.tool_calls?.[0]?.name).toBe('get_weather');
      expect(whole?.tool_calls?.[0]?.args).toEqual({ city: expect.any(String), unit: 'c' });
      expect(whole?.invalid_tool_calls ?? []).toEqual([]);
      expect(whole?.response_metadata.finish_reason).toBe('tool_calls');
      // The tool runs on the parsed args as LangChain hands them over.
      expect(await weather.invoke({ city: 'Oslo', ...whole?.tool_calls?.[0]?.args })).toMatch(/^sunny in /);
    });

    it('a bad key is an AuthenticationError (401) and is not retried', async () => {
      const err = await rejection(
        new ChatOpenAI({ model: 'echo', apiKey: 'sk-aq-wrong', configuration: { baseURL }, maxRetries: 3 }).invoke(
          'hi',
        ),
      );
      expect(err.constructor.name).toBe('AuthenticationError');
      expect(err.status).toBe(401);
      expect(err.lc_error_code).toBe('MODEL_AUTHENTICATION');
    });

    it('a chat request to an embedding-only model is a 404 naming the right endpoint', async () => {
      const err = await rejection(chat('embed').invoke('hi'));
      expect(err.status).toBe(404);
      expect(err.code).toBe('model_not_supported');
      expect(String(err.message)).toMatch(/embeddings/);
    });
  });

  describe('OpenAIEmbeddings', () => {
    it('embedQuery: a deterministic unit vector of 256 dimensions', async () => {
      const e = embeddings('embed');
      const a = await e.embedQuery('the river flows');
      expect(a).toHaveLength(256);
      expect(a.every((x) => typeof x === 'number' && Number.isFinite(x))).toBe(true);
      expect(norm(a)).toBeCloseTo(1, 5);
      expect(await e.embedQuery('the river flows')).toEqual(a);
      expect(await e.embedQuery('a different text')).not.toEqual(a);
    });

    it('embedDocuments: one vector per text, in order, equal to embedQuery of each', async () => {
      const e = embeddings('embed');
      const texts = ['first document', 'second document', 'first document', 'a third, longer document here'];
      const vectors = await e.embedDocuments(texts);
      expect(vectors).toHaveLength(texts.length);
      for (const v of vectors) {
        expect(v).toHaveLength(256);
        expect(norm(v)).toBeCloseTo(1, 5);
      }
      expect(vectors[2]).toEqual(vectors[0]);
      expect(vectors[1]).not.toEqual(vectors[0]);
      expect(vectors[3]).toEqual(await e.embedQuery(texts[3]!));
    });

    it('dimensions and float encoding: shorter unit vectors, the same with either encoding', async () => {
      const short = await embeddings('embed', { dimensions: 64 }).embedQuery('the river flows');
      expect(short).toHaveLength(64);
      expect(norm(short)).toBeCloseTo(1, 5);
      // The OpenAI SDK asks for base64 by default and decodes it; float must give the same numbers.
      const float = await embeddings('embed', { dimensions: 64, encodingFormat: 'float' }).embedQuery(
        'the river flows',
      );
      expect(float).toHaveLength(64);
      for (let i = 0; i < 64; i++) {
        expect(float[i]).toBeCloseTo(short[i]!, 6);
      }
    });

    it('a chat model refuses embeddings with 404 model_not_supported; a bad key is 401', async () => {
      const notSupported = await rejection(embeddings('echo').embedQuery('hello'));
      expect(notSupported.status).toBe(404);
      expect(notSupported.code).toBe('model_not_supported');
      const unauthorized = await rejection(
        new OpenAIEmbeddings({ model: 'embed', apiKey: 'sk-aq-wrong', configuration: { baseURL } }).embedQuery('x'),
      );
      expect(unauthorized.constructor.name).toBe('AuthenticationError');
      expect(unauthorized.status).toBe(401);
    });
  });

  describe('OpenAI (legacy completions LLM)', () => {
    it('invoke: a text completion that echoes the prompt', async () => {
      const llm = new OpenAI({ model: 'echo', apiKey: key, configuration: { baseURL }, maxRetries: 0, maxTokens: 32 });
      const prompt = 'one two three four five';
      const text = await llm.invoke(prompt);
      expect(words(text)).toEqual(words(prompt));
      const result = await llm.generate([prompt, 'six seven']);
      expect(result.generations.map((g) => words(g[0]?.text))).toEqual([words(prompt), ['six', 'seven']]);
      expect(result.generations[0]?.[0]?.generationInfo?.finishReason).toBe('stop');
      expect(result.llmOutput?.tokenUsage?.completionTokens).toBe(7);
    });

    it('a bad key is an AuthenticationError (401)', async () => {
      const llm = new OpenAI({ model: 'echo', apiKey: 'sk-aq-wrong', configuration: { baseURL }, maxRetries: 0 });
      const err = await rejection(llm.invoke('hello'));
      expect(err.status).toBe(401);
      expect(err.constructor.name).toBe('AuthenticationError');
    });
  });
});
