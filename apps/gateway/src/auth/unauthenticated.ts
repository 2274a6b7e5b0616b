import { ApiError } from '@app/common';

/** The 401 for a request without a usable credential, worded as OpenAI words it. */
export function unauthenticated(authorization: string | undefined): ApiError {
  return authorization === undefined
    ? new ApiError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        'invalid_request_error',
      )
    : new ApiError(
        401,
        'Malformed Authorization header: expected "Bearer <key>".',
        'invalid_request_error',
        null,
        'invalid_api_key',
      );
}
