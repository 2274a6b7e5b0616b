import {
  ApiError,
  AppConfig,
  Clock,
  CONCURRENCY_LEASE_MS,
  modelCapacity,
  TokenAdmission,
  type LimitDecision,
  RateLimitError,
  type ModelEntry,
  type TokenRecord,
} from '@app/common';
import { Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import type { RedisClient } from '@app/common';
import { InjectRedis } from '../redis/redis.tokens';

const LABELS = {
  requests: 'requests per minute (RPM)',
  input_tokens: 'input tokens per minute (TPM)',
  output_tokens: 'output tokens per minute (TPM)',
} as const;

/** An admitted request: its rate-limit headers and the slot it holds until `release()`. */
export interface Admitted {
  headers: Record<string, string>;
  /**
   * The token's requests for the model in flight, this one included (its turn: bounds its
   * fair-queueing lead); 0 for a model without a capacity, which counts none.
   */
  turn: number;
  /** Gives the token's concurrency slot back; idempotent. */
  release: () => void;
}

/**
 * Admits a token's request: its concurrency slot (max_parallel_requests, across every
 * gateway) and its per-minute limits, in one Redis script. The gateway holds the slot for
 * as long as it holds the request, waiting or running, and renews all its leases in one
 * pipeline a few times per lease period; a gateway that dies simply stops renewing.
 */
@Injectable()
export class LimitsService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(LimitsService.name);
  private readonly admission: TokenAdmission;
  /** Token id → the requests this gateway holds a lease for (request id → the model whose turn it holds, or null). */
  private readonly held = new Map<string, Map<string, string | null>>();
  private timer?: NodeJS.Timeout;

  constructor(
    @InjectRedis() redis: RedisClient,
    private readonly config: AppConfig,
    private readonly clock: Clock,
  ) {
    this.admission = new TokenAdmission(redis, config.names);
  }

  onModuleInit(): void {
    this.timer = setInterval(() => this.renew(), Math.floor(CONCURRENCY_LEASE_MS / 3));
    this.timer.unref();
  }

  onApplicationShutdown(): void {
    clearInterval(this.timer);
  }

  /** Throws 429 (with the rate-limit headers) when the token is over a limit. */
  async admit(token: TokenRecord, model: ModelEntry, rid: string, now: number): Promise<Admitted> {
    // Only a model with a capacity counts turns (they bound its fair-queueing lead).
    const turnModel = modelCapacity(model) === undefined ? null : model.name;
    let decision: LimitDecision;
    try {
      decision = await this.admission.check(token, {
        rid,
        model: turnModel,
        weight: 1 / model.requestLimitMultiplier,
        maxParallel: token.max_parallel_requests ?? this.config.env.AQUEDUCT_DEFAULT_MAX_PARALLEL,
        now,
      });
    } catch {
      throw ApiError.datastoreUnavailable();
    }
    if (!decision.allowed) {
      throw this.refusal(token, decision);
    }
    const rids = this.held.get(token.id) ?? new Map<string, string | null>();
    this.held.set(token.id, rids.set(rid, turnModel));
    let released = false;
    return {
      headers: decision.headers,
      turn: decision.turn,
      release: () => {
        if (released) {
          return;
        }
        released = true;
        rids.delete(rid);
        if (rids.size === 0) {
          this.held.delete(token.id);
        }
        // A failed release only delays the slot until its lease expires.
        this.admission.release(token.id, turnModel, rid).catch(() => undefined);
      },
    };
  }

  /** Requests this gateway holds slots for (all tokens). */
  get heldCount(): number {
    let n = 0;
    for (const rids of this.held.values()) {
      n += rids.size;
    }
    return n;
  }

  private refusal(token: TokenRecord, decision: LimitDecision): RateLimitError {
    if (decision.reason === 'concurrency') {
      const max = token.max_parallel_requests ?? this.config.env.AQUEDUCT_DEFAULT_MAX_PARALLEL;
      return new RateLimitError(
        `Too many concurrent requests on this API key: at most ${max} may be in progress at once. Please retry when one has finished.`,
        'requests',
        decision.retryAfterMs,
        decision.headers,
        'concurrency_limit_exceeded',
      );
    }
    const reason = decision.reason ?? 'requests';
    const limit =
      reason === 'requests'
        ? token.requests_per_minute
        : reason === 'input_tokens'
          ? token.input_tokens_per_minute
          : token.output_tokens_per_minute;
    return new RateLimitError(
      `Rate limit reached for ${LABELS[reason]} on this API key: limit ${limit}. Please try again in ${(decision.retryAfterMs / 1000).toFixed(1)}s.`,
      reason === 'requests' ? 'requests' : 'tokens',
      decision.retryAfterMs,
      decision.headers,
    );
  }

  private renew(): void {
    this.admission.renew(this.held, this.clock.now()).catch((err: Error) => {
      this.logger.warn(`could not renew concurrency leases: ${err.message}`);
    });
  }
}
