import {
  ApiError,
  AppConfig,
  modelServes,
  OPERATIONS,
  RouterConfig,
  type ModelEntry,
  type OperationSpec,
  type TokenRecord,
} from '@app/common';
import { Injectable } from '@nestjs/common';

export interface ModelObject {
  id: string;
  object: 'model';
  created: number;
  owned_by: 'aqueduct';
}

/** The router config as seen by one token: alias resolution and the allow-list. */
@Injectable()
export class ModelCatalog {
  constructor(private readonly config: AppConfig) {}

  /** Canonical model for a name or alias; 404 when unknown. */
  lookup(name: string): ModelEntry {
    const model = this.config.router.resolve(name);
    if (model === undefined) {
      throw new ApiError(
        404,
        `The model \`${name.slice(0, 200)}\` does not exist or you do not have access to it.`,
        'invalid_request_error',
        'model',
        'model_not_found',
      );
    }
    return model;
  }

  /**
   * 403 when the model is outside the token's allow-list; 404 `model_not_supported` when
   * the model does not serve the operation (its `model_info.mode`), naming the endpoint that
   * would serve it.
   */
  authorize(model: ModelEntry, token: TokenRecord, op: OperationSpec): void {
    if (!this.allowed(model, token)) {
      throw new ApiError(
        403,
        `This API key is not allowed to use the model \`${model.name}\`.`,
        'permission_error',
        'model',
        'model_not_allowed',
      );
    }
    if (!modelServes(model, op.name)) {
      const use =
        model.mode === undefined
          ? `${OPERATIONS.chat.endpoint} or ${OPERATIONS.completion.endpoint}`
          : OPERATIONS[model.mode].endpoint;
      const kind = model.mode === undefined ? 'a completion and chat' : `a${model.mode === 'embedding' ? 'n' : ''} ${model.mode}`;
      throw new ApiError(
        404,
        `The model \`${model.name}\` is ${kind} model and is not supported on ${op.endpoint}. Use ${use} instead.`,
        'invalid_request_error',
        'model',
        'model_not_supported',
      );
    }
  }

  list(token: TokenRecord): ModelObject[] {
    return this.config.router.models.filter((m) => this.allowed(m, token)).map((m) => this.toObject(m));
  }

  /** Aliases resolve to their model, but an unknown or forbidden id is a 404 (OpenAI hides existence). */
  retrieve(id: string, token: TokenRecord): ModelObject {
    const model = this.config.router.resolve(id);
    if (model === undefined || !this.allowed(model, token)) {
      throw new ApiError(
        404,
        `The model '${id.slice(0, 200)}' does not exist`,
        'invalid_request_error',
        'model',
        'model_not_found',
      );
    }
    return this.toObject(model);
  }

  private allowed(model: ModelEntry, token: TokenRecord): boolean {
    return token.models === null || token.models.includes(model.name);
  }

  private toObject(m: ModelEntry): ModelObject {
    return { id: m.name, object: 'model', created: RouterConfig.CREATED, owned_by: 'aqueduct' };
  }
}
