import { AppConfig, CHAT, COMPLETION, EMBEDDING, type OperationSpec, type TokenRecord } from '@app/common';
import { Controller, HttpCode, Post, Req, Res } from '@nestjs/common';
import type { Request, Response } from 'express';
import { CurrentToken } from '../auth/current-token.decorator';
import { clientGone, labelModel, markAdmitted } from '../http/request-state';
import { InferenceService } from './inference.service';
import { JsonResponder } from './json.responder';
import type { Responder } from './responder';
import { SseResponder } from './sse.responder';

/** Bytes a stream's client may leave unread before it is cut off (slow-client protection). */
const MAX_BUFFERED_BYTES = 1024 * 1024;

/**
 * The OpenAI operations, one route pair each, all on one path: admit (InferenceService),
 * pick the responder (SSE or JSON), run until the response closes. Raw `res`, not `@Sse()`:
 * streams need late commit and in-band errors.
 */
@Controller()
export class InferenceController {
  constructor(
    private readonly inference: InferenceService,
    private readonly config: AppConfig,
  ) {}

  @Post(['completions', 'v1/completions'])
  @HttpCode(200)
  completions(@Req() req: Request, @Res() res: Response, @CurrentToken() token: TokenRecord): Promise<void> {
    return this.serve(COMPLETION, req, res, token);
  }

  @Post(['chat/completions', 'v1/chat/completions'])
  @HttpCode(200)
  chat(@Req() req: Request, @Res() res: Response, @CurrentToken() token: TokenRecord): Promise<void> {
    return this.serve(CHAT, req, res, token);
  }

  @Post(['embeddings', 'v1/embeddings'])
  @HttpCode(200)
  embeddings(@Req() req: Request, @Res() res: Response, @CurrentToken() token: TokenRecord): Promise<void> {
    return this.serve(EMBEDDING, req, res, token);
  }

  /** Resolves when the response has been fully written (or the client went away). */
  private async serve(op: OperationSpec, req: Request, res: Response, token: TokenRecord): Promise<void> {
    const client = {
      rid: req.rid,
      route: req.path,
      ip: req.ip ?? null,
      userAgent: req.headers['user-agent']?.slice(0, 256) ?? null,
    };
    const run = await this.inference.admit(op, req.body, token, client, (model) => labelModel(res, model));
    if (clientGone(res)) {
      run.abandonBeforeStart();
      return;
    }
    markAdmitted(res);
    for (const [name, value] of Object.entries(run.headers)) {
      res.setHeader(name, value);
    }
    const responder: Responder = run.stream
      ? new SseResponder(res, run.responseMeta, {
          chunkObject: op.chunkObject ?? 'text_completion',
          includeUsage: run.includeUsage,
          commitTimeoutMs: this.config.env.AQUEDUCT_COMMIT_TIMEOUT_MS,
          maxBufferedBytes: MAX_BUFFERED_BYTES,
          onSlowClient: () => run.cancel('slow_client'),
          lateHeaders: () => run.lateHeaders(),
        })
      : new JsonResponder(res, op, run.responseMeta, () => run.lateHeaders());
    await new Promise<void>((resolve) => {
      res.once('close', () => {
        run.end(responder.finished);
        resolve();
      });
      run.start(responder);
    });
  }
}
