import { createOpenAICompatible, type OpenAICompatibleProvider } from '@ai-sdk/openai-compatible';
import { APICallError, embed, embedMany, generateText, jsonSchema, streamText, tool } from 'ai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';

/**
 * The Vercel AI SDK (`ai` with `@ai-sdk/openai-compatible`) used the way its users use it,
 * against a real stack (gateway and worker processes, real Redis, simulator models).
 */

function words(text: unknown): string[] {
  return String(text).split(/\s+/).filter(Boolean);
}

function norm(v: number[]): number {
  return Math.sqrt(v.reduce((s, x) => s + x * x, 0));
}

/** The error a rejected promise carries (fails if it resolves). */
async function rejection(p: PromiseLike<unknown>): Promise<unknown> {
  return Promise.resolve(p).then(
    (v) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(v).slice(0, 300)}`);
    },
    (e: unknown) => e,
  );
}

/** An APICallError with its status and parsed OpenAI error body. */
function apiCallError(err: unknown): { statusCode?: number; isRetryable: boolean; error: Record<string, unknown> } {
  expect(APICallError.isInstance(err), String(err)).toBe(true);
  const e = err as APICallError;
  const body = JSON.parse(e.responseBody ?? '{}') as { error?: Record<string, unknown> };
  expect(body.error).toBeTypeOf('object');
  return { statusCode: e.statusCode, isRetryable: e.isRetryable, error: body.error ?? {} };
}

describe('Vercel AI SDK against the gateway', () => {
  let stack: Stack;
  let aqueduct: OpenAICompatibleProvider;

  beforeAll(async () => {
    stack = await Stack.start('clients-vercel-ai', {
      workers: 2,
      routerConfig: writeModelList(
        simulatorDeployment('echo', 'echo', { itl_ms: 1 }),
        simulatorDeployment('lorem', 'lorem', { itl_ms: 1 }),
        simulatorDeployment('embed', 'lorem', {}, { mode: 'embedding' }),
      ),
    });
    const key = await stack.createKey({ name: 'vercel-ai' });
    aqueduct = createOpenAICompatible({
      name: 'aqueduct',
      baseURL: `${stack.baseUrl}/v1`,
      apiKey: key,
      includeUsage: true,
    });
  });

  afterAll(async () => {
    await stack?.stop();
  });

  describe('chat', () => {
    it('generateText: the echo model repeats the prompt words, with usage and finish reason', async () => {
      const prompt = 'the quick brown fox jumps over the lazy dog';
      const result = await generateText({
        model: aqueduct.chatModel('echo'),
        system: 'You are a parrot.',
        prompt,
        maxRetries: 0,
      });
      expect(words(result.text)).toEqual(words(prompt));
      expect(result.finishReason).toBe('stop');
      expect(result.usage.inputTokens).toBeGreaterThan(0);
      expect(result.usage.outputTokens).toBe(words(prompt).length);
      expect(result.usage.totalTokens).toBe((result.usage.inputTokens ?? 0) + (result.usage.outputTokens ?? 0));
      expect(result.response.id).toMatch(/^chatcmpl-/);
      expect(result.response.modelId).toBe('echo');
      expect(result.toolCalls).toEqual([]);
    });

    it('generateText with messages: the last user message is what the echo model repeats', async () => {
      const result = await generateText({
        model: aqueduct('echo'),
        messages: [
          { role: 'user', content: 'first question' },
          { role: 'assistant', content: 'first answer' },
          { role: 'user', content: [{ type: 'text', text: 'second question please' }] },
        ],
        maxRetries: 0,
      });
      expect(words(result.text)).toEqual(['second', 'question', 'please']);
    });

    it('streamText: textStream yields several deltas that add up to the echo, then usage', async () => {
      const prompt = 'alpha beta gamma delta epsilon zeta eta theta';
      const result = streamText({ model: aqueduct.chatModel('echo'), prompt, maxRetries: 0 });
      const deltas: string[] = [];
      for await (const delta of result.textStream) {
        deltas.push(delta);
      }
      expect(deltas.length).toBeGreaterThan(words(prompt).length / 2);
      expect(words(deltas.join(''))).toEqual(words(prompt));
      expect(await result.text).toBe(deltas.join(''));
      expect(await result.finishReason).toBe('stop');
      // includeUsage: the provider asks for stream_options.include_usage and reads the usage chunk.
      const usage = await result.usage;
      expect(usage.outputTokens).toBe(words(prompt).length);
      expect(usage.inputTokens).toBeGreaterThan(0);
    });

    it('maxOutputTokens cuts a lorem answer: finish reason length', async () => {
      const result = await generateText({
        model: aqueduct.chatModel('lorem'),
        prompt: 'tell me a long story',
        maxOutputTokens: 3,
        maxRetries: 0,
      });
      expect(words(result.text).length).toBeGreaterThan(0);
      expect(words(result.text).length).toBeLessThanOrEqual(3);
      expect(result.usage.outputTokens).toBe(3);
      expect(result.finishReason).toBe('length');
    });

    it('a bad key: APICallError 401, not retryable, OpenAI error body', async () => {
      const bad = createOpenAICompatible({ name: 'aqueduct', baseURL: `${stack.baseUrl}/v1`, apiKey: 'sk-aq-wrong' });
      const err = apiCallError(await rejection(generateText({ model: bad('echo'), prompt: 'hi', maxRetries: 0 })));
      expect(err.statusCode).toBe(401);
      expect(err.isRetryable).toBe(false);
      expect(err.error.message).toEqual(expect.any(String));
    });

    it('a chat request to an embedding-only model: APICallError 404 model_not_supported', async () => {
      const err = apiCallError(
        await rejection(generateText({ model: aqueduct('embed'), prompt: 'hi', maxRetries: 0 })),
      );
      expect(err.statusCode).toBe(404);
      expect(err.error.code).toBe('model_not_supported');
      expect(String(err.error.message)).toMatch(/embeddings/);
    });
  });

  describe('tools', () => {
    const weather = tool({
      description: 'The current weather in a city',
      inputSchema: z.object({ city: z.string(), unit: z.enum(['c', 'f']).optional() }),
    });
    const lookup = tool({
      description: 'Looks a term up',
      inputSchema: jsonSchema<Record<string, unknown>>({
        type: 'object',
        properties: { term: { type: 'string' } },
        required: ['term'],
      }),
    });

    it("generateText with toolChoice {type:'tool'}: one call to that tool, input parsed by the schema", async () => {
      const result = await generateText({
        model: aqueduct.chatModel('echo'),
        prompt: 'What is the weather in Paris?',
        tools: { get_weather: weather, lookup },
        toolChoice: { type: 'tool', toolName: 'get_weather' },
        maxRetries: 0,
      });
      expect(result.finishReason).toBe('tool-calls');
      expect(result.toolCalls).toHaveLength(1);
      const call = result.toolCalls[0];
      expect(call?.toolName).toBe('get_weather');
      expect(call?.toolCallId).toEqual(expect.any(String));
      // Not `invalid`: the arguments were JSON that the zod schema accepted.
      expect(call?.invalid ?? false).toBe(false);
      expect(call?.dynamic ?? false).toBe(false);
      // One value of each property's type: the string, and the enum's first value.
      expect(call?.input).toEqual({ city: expect.any(String), unit: 'c' });
      expect(result.response.id).toMatch(/^chatcmpl-/);
    });

    it('a jsonSchema tool forced by name works the same way', async () => {
      const result = await generateText({
        model: aqueduct.chatModel('lorem'),
        prompt: 'look up "aqueduct"',
        tools: { get_weather: weather, lookup },
        toolChoice: { type: 'tool', toolName: 'lookup' },
        maxRetries: 0,
      });
      expect(result.toolCalls.map((c) => c.toolName)).toEqual(['lookup']);
      expect(result.toolCalls[0]?.invalid ?? false).toBe(false);
      expect(result.toolCalls[0]?.input).toEqual({ term: expect.any(String) });
      expect(result.finishReason).toBe('tool-calls');
    });

    it('streamText with a forced tool: the streamed deltas become one complete tool call', async () => {
      const result = streamText({
        model: aqueduct.chatModel('echo'),
        prompt: 'Weather in Oslo?',
        tools: { get_weather: weather },
        toolChoice: { type: 'tool', toolName: 'get_weather' },
        maxRetries: 0,
      });
      const parts: string[] = [];
      let inputDeltas = '';
      for await (const part of result.fullStream) {
        parts.push(part.type);
        if (part.type === 'tool-input-delta') {
          inputDeltas += part.delta;
        }
        if (part.type === 'error') {
          throw part.error instanceof Error ? part.error : new Error(JSON.stringify(part.error));
        }
      }
      expect(parts).toContain('tool-call');
      const calls = await result.toolCalls;
      expect(calls).toHaveLength(1);
      expect(calls[0]?.toolName).toBe('get_weather');
      expect(calls[0]?.invalid ?? false).toBe(false);
      expect(calls[0]?.input).toEqual({ city: expect.any(String), unit: 'c' });
      if (inputDeltas !== '') {
        expect(JSON.parse(inputDeltas)).toEqual(calls[0]?.input);
      }
      expect(await result.finishReason).toBe('tool-calls');
    });
  });

  describe('embeddings', () => {
    it('embed: a deterministic unit vector of 256 dimensions, with token usage', async () => {
      const model = aqueduct.embeddingModel('embed');
      const a = await embed({ model, value: 'the river flows', maxRetries: 0 });
      expect(a.embedding).toHaveLength(256);
      expect(norm(a.embedding)).toBeCloseTo(1, 5);
      expect(a.usage.tokens).toBe(3);
      const again = await embed({ model, value: 'the river flows', maxRetries: 0 });
      expect(again.embedding).toEqual(a.embedding);
      const other = await embed({ model, value: 'something else entirely', maxRetries: 0 });
      expect(other.embedding).not.toEqual(a.embedding);
    });

    it('embedMany: one vector per value, in order, equal to embed of each', async () => {
      const model = aqueduct.embeddingModel('embed');
      const values = ['first document', 'second document', 'first document', 'the river flows'];
      const many = await embedMany({ model, values, maxRetries: 0 });
      expect(many.values).toEqual(values);
      expect(many.embeddings).toHaveLength(values.length);
      for (const v of many.embeddings) {
        expect(v).toHaveLength(256);
        expect(norm(v)).toBeCloseTo(1, 5);
      }
      expect(many.embeddings[2]).toEqual(many.embeddings[0]);
      expect(many.embeddings[1]).not.toEqual(many.embeddings[0]);
      const single = await embed({ model, value: 'the river flows', maxRetries: 0 });
      expect(many.embeddings[3]).toEqual(single.embedding);
      // The simulator counts the words of every input.
      expect(many.usage.tokens).toBe(values.reduce((n, v) => n + words(v).length, 0));
    });

    it('dimensions: shorter unit vectors', async () => {
      const { embedding } = await embed({
        model: aqueduct.embeddingModel('embed'),
        value: 'the river flows',
        dimensions: 32,
        maxRetries: 0,
      });
      expect(embedding).toHaveLength(32);
      expect(norm(embedding)).toBeCloseTo(1, 5);
    });

    it('embeddings from a chat model: APICallError 404 model_not_supported', async () => {
      const err = apiCallError(
        await rejection(embed({ model: aqueduct.embeddingModel('echo'), value: 'x', maxRetries: 0 })),
      );
      expect(err.statusCode).toBe(404);
      expect(err.error.code).toBe('model_not_supported');
    });
  });

  describe('completions', () => {
    it('a completion model: generateText over /v1/completions echoes the prompt it was sent', async () => {
      const result = await generateText({
        model: aqueduct.completionModel('echo'),
        prompt: 'one two three four five',
        maxOutputTokens: 32,
        maxRetries: 0,
      });
      // The provider turns the prompt into `user:\n<prompt>\n\nassistant:\n` (stop `\nuser:`),
      // and the echo simulator repeats every word of what it was sent.
      expect(words(result.text)).toEqual(['user:', 'one', 'two', 'three', 'four', 'five', 'assistant:']);
      expect(result.finishReason).toBe('stop');
      expect(result.usage.outputTokens).toBe(7);
      expect(result.usage.inputTokens).toBe(7);
    });
  });
});
