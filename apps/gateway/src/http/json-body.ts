import { ApiError } from '@app/common';
import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { sendApiError } from './error-response';

/**
 * Body handling with OpenAI-style errors: not JSON → 415, too large → 413, malformed
 * or not an object → 400. Nest's built-in parser answers these with its own shapes.
 */
export function jsonBody(limitBytes: number): RequestHandler[] {
  const parse = express.json({ limit: limitBytes, strict: false, type: () => true });

  const requireJson: RequestHandler = (req, res, next) => {
    if (!hasBody(req)) {
      next();
      return;
    }
    const type = req.headers['content-type'] ?? '';
    if (!/^application\/json\s*(;|$)/i.test(type)) {
      sendApiError(
        res,
        new ApiError(
          415,
          `Unsupported Content-Type: '${type.slice(0, 100)}'. Send the request body as application/json.`,
          'invalid_request_error',
        ),
      );
      return;
    }
    parse(req, res, (err?: unknown) => {
      if (err !== undefined) {
        next(err);
        return;
      }
      const body: unknown = req.body;
      if (typeof body !== 'object' || body === null || Array.isArray(body)) {
        sendApiError(res, ApiError.invalid('The request body must be a JSON object.'));
        return;
      }
      next();
    });
  };

  const onParseError = (err: unknown, _req: Request, res: Response, next: NextFunction): void => {
    const type = (err as { type?: string }).type;
    if (res.headersSent || type === undefined) {
      next(err);
      return;
    }
    switch (type) {
      case 'entity.too.large':
        sendApiError(
          res,
          new ApiError(413, `The request body is larger than ${limitBytes} bytes.`, 'invalid_request_error'),
        );
        return;
      case 'encoding.unsupported':
      case 'charset.unsupported':
        sendApiError(res, new ApiError(415, 'Unsupported request body encoding or charset.', 'invalid_request_error'));
        return;
      default:
        sendApiError(
          res,
          ApiError.invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
          ),
        );
    }
  };

  return [requireJson, onParseError as unknown as RequestHandler];
}

function hasBody(req: Request): boolean {
  if (req.method === 'GET' || req.method === 'HEAD' || req.method === 'OPTIONS' || req.method === 'DELETE') {
    return false;
  }
  return true;
}
