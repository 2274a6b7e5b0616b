import { Injectable, type OnApplicationBootstrap, RequestMethod } from '@nestjs/common';
import { METHOD_METADATA, PATH_METADATA } from '@nestjs/common/constants';
import { DiscoveryService, MetadataScanner } from '@nestjs/core';

/**
 * The gateway's routes, read from the controllers at boot, so that a known path with a
 * wrong method answers 405 with `Allow` instead of a misleading 404.
 */
@Injectable()
export class RouteTable implements OnApplicationBootstrap {
  private routes: { pattern: RegExp; method: string }[] = [];

  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
  ) {}

  onApplicationBootstrap(): void {
    for (const wrapper of this.discovery.getControllers()) {
      const instance = wrapper.instance as object | undefined;
      if (instance === undefined || wrapper.metatype === null) {
        continue;
      }
      const base = this.paths(Reflect.getMetadata(PATH_METADATA, wrapper.metatype));
      const proto = Object.getPrototypeOf(instance) as object;
      for (const name of this.scanner.getAllMethodNames(proto)) {
        const handler = (proto as Record<string, unknown>)[name];
        if (typeof handler !== 'function') {
          continue;
        }
        const method = Reflect.getMetadata(METHOD_METADATA, handler) as RequestMethod | undefined;
        const paths = Reflect.getMetadata(PATH_METADATA, handler) as unknown;
        if (method === undefined || paths === undefined) {
          continue;
        }
        for (const b of base) {
          for (const p of this.paths(paths)) {
            this.routes.push({ pattern: this.toRegExp(`${b}/${p}`), method: RequestMethod[method] });
          }
        }
      }
    }
  }

  /** The methods `path` answers: HEAD with GET, and OPTIONS (204 with `Allow`, from the exception filter). */
  allowedMethods(path: string): string[] {
    const methods = new Set(this.routes.filter((r) => r.pattern.test(path)).map((r) => r.method));
    if (methods.has('GET')) {
      methods.add('HEAD');
    }
    if (methods.size > 0) {
      methods.add('OPTIONS');
    }
    return [...methods];
  }

  private paths(value: unknown): string[] {
    const list = Array.isArray(value) ? value : [value ?? ''];
    return list.map((p) => String(p).replace(/^\/+|\/+$/g, ''));
  }

  private toRegExp(path: string): RegExp {
    const clean = `/${path.split('/').filter(Boolean).join('/')}`;
    const source = clean
      .replace(/[.+?^${}()|[\]\\]/g, '\\$&')
      .replace(/:[A-Za-z_]+/g, '[^/]+')
      .replace(/\*[A-Za-z_]+/g, '.+');
    return new RegExp(`^${source}/?$`);
  }
}
