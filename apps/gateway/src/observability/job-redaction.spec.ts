import { describe, expect, it } from 'vitest';
import { redactJobData } from './job-redaction';

describe('redactJobData', () => {
  it('keeps routing fields, summarises content and hides anything credential-like', () => {
    const data = {
      v: 1,
      rid: 'r1',
      model: 'sim',
      tokenId: 'tok_123',
      params: {
        prompt: 'tell me a secret',
        suffix: ['a', 'b'],
        max_tokens: 16,
        api_key: 'whatever',
        extra_headers: { Authorization: 'Bearer abc' },
        note: 'sk-abcdefghijklmnopqrstuvwxyz',
        logit_bias: { '50256': -100 },
      },
      meta: { route: '/v1/completions', ip: '127.0.0.1' },
    };
    expect(redactJobData(data)).toEqual({
      v: 1,
      rid: 'r1',
      model: 'sim',
      tokenId: 'tok_123',
      params: {
        prompt: '[redacted: 16 characters]',
        suffix: '[redacted: 2 items]',
        max_tokens: 16,
        api_key: '[redacted]',
        extra_headers: { Authorization: '[redacted]' },
        note: '[redacted]',
        logit_bias: { '50256': -100 },
      },
      meta: { route: '/v1/completions', ip: '127.0.0.1' },
    });
  });

  it('summarises chat messages, predicted output and embedding inputs, keeping the parameters', () => {
    const chat = {
      op: 'chat',
      params: {
        messages: [{ role: 'user', content: 'my password is hunter2' }],
        prediction: { type: 'content', content: 'the answer' },
        tools: [{ type: 'function', function: { name: 'lookup' } }],
        max_completion_tokens: 8,
      },
    };
    expect(redactJobData(chat)).toEqual({
      op: 'chat',
      params: {
        messages: '[redacted: 1 items]',
        prediction: '[redacted]',
        tools: [{ type: 'function', function: { name: 'lookup' } }],
        max_completion_tokens: 8,
      },
    });
    expect(redactJobData({ op: 'embedding', params: { input: ['a', 'b', 'c'], dimensions: 8 } })).toEqual({
      op: 'embedding',
      params: { input: '[redacted: 3 items]', dimensions: 8 },
    });
  });

  it('passes through what is not an object', () => {
    expect(redactJobData(null)).toBeNull();
    expect(redactJobData(3)).toBe(3);
  });
});
