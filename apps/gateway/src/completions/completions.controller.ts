import type { TokenRecord } from '@app/common';
import { Controller, HttpCode, Post, Req, Res } from '@nestjs/common';
import type { Request, Response } from 'express';
import { CurrentToken } from '../auth/current-token.decorator';
import { CompletionsService } from './completions.service';

@Controller()
export class CompletionsController {
  constructor(private readonly completions: CompletionsService) {}

  /** Raw response: streams need late commit and in-band errors that `@Sse()` cannot give. */
  @Post(['completions', 'v1/completions'])
  @HttpCode(200)
  create(@Req() req: Request, @Res() res: Response, @CurrentToken() token: TokenRecord): Promise<void> {
    return this.completions.complete(req, res, token);
  }
}
