import { ApiError, Clock, tokenState, TokenStore, type TokenRecord, type UsageSummary } from '@app/common';
import { Body, Controller, Delete, Get, HttpCode, Param, Post, Query, UseGuards } from '@nestjs/common';
import { Public } from '../auth/public.decorator';
import { UsageService } from '../usage/usage.service';
import { AdminGuard } from './admin.guard';
import { parseCreateToken, parseSince } from './admin-requests';

type ListedToken = TokenRecord & { state: string };

/** Token management and usage for operators; the AdminGuard replaces token auth here. */
@Controller('admin')
@Public()
@UseGuards(AdminGuard)
export class AdminController {
  constructor(
    private readonly tokens: TokenStore,
    private readonly usage: UsageService,
    private readonly clock: Clock,
  ) {}

  /** Returns the plaintext key: the only time it is ever shown. */
  @Post('tokens')
  @HttpCode(201)
  async create(@Body() body: unknown): Promise<TokenRecord & { key: string }> {
    const { key, token } = await this.tokens.create(parseCreateToken(body));
    return { ...token, key };
  }

  @Get('tokens')
  async list(): Promise<{ object: 'list'; data: ListedToken[] }> {
    const now = this.clock.now();
    return { object: 'list', data: (await this.tokens.list()).map((t) => ({ ...t, state: tokenState(t, now) })) };
  }

  @Delete('tokens/:id')
  async revoke(@Param('id') id: string): Promise<{ id: string; object: 'token'; revoked: true }> {
    if (!(await this.tokens.revoke(id))) {
      throw new ApiError(
        404,
        `No token with id '${id.slice(0, 100)}'.`,
        'invalid_request_error',
        'id',
        'token_not_found',
      );
    }
    return { id, object: 'token', revoked: true };
  }

  @Get('usage')
  usageSummary(
    @Query('since') since: unknown,
    @Query('token') token: unknown,
    @Query('model') model: unknown,
  ): Promise<UsageSummary> {
    return this.usage.store.summarize({
      since: parseSince(since, this.clock.now()),
      tokenId: typeof token === 'string' && token !== '' ? token : undefined,
      model: typeof model === 'string' && model !== '' ? model : undefined,
    });
  }
}
