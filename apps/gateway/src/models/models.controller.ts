import type { TokenRecord } from '@app/common';
import { Controller, Get, Param } from '@nestjs/common';
import { CurrentToken } from '../auth/current-token.decorator';
import { ModelCatalogService, type ModelObject } from './model-catalog.service';

@Controller()
export class ModelsController {
  constructor(private readonly catalog: ModelCatalogService) {}

  @Get(['models', 'v1/models'])
  list(@CurrentToken() token: TokenRecord): { object: 'list'; data: ModelObject[] } {
    return { object: 'list', data: this.catalog.list(token) };
  }

  /** A wildcard, because model names may contain slashes (`Qwen/Qwen2.5-7B`). */
  @Get(['models/*id', 'v1/models/*id'])
  retrieve(@Param('id') id: string | string[], @CurrentToken() token: TokenRecord): ModelObject {
    return this.catalog.retrieve(Array.isArray(id) ? id.join('/') : id, token);
  }
}
