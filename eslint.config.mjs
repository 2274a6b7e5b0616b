// @ts-check
import js from '@eslint/js';
import { defineConfig, globalIgnores } from 'eslint/config';
import prettier from 'eslint-config-prettier';
import tseslint from 'typescript-eslint';

const TS_FILES = ['**/*.ts', '**/*.mts', '**/*.cts'];
const JS_FILES = ['**/*.js', '**/*.mjs', '**/*.cjs'];
const TEST_FILES = ['**/*.spec.ts', '**/*.e2e-spec.ts', 'test/**', 'bench/**', 'scripts/**'];
/** Every app, the CLI included, reaches libs/ through the `@app/common` alias, never a relative path. */
const NO_RELATIVE_LIBS = {
  group: ['../**/libs', '../**/libs/**', '/libs', '/libs/**'],
  message: "Apps must import the shared library as '@app/common', not by a relative path into libs/.",
};

export default defineConfig(
  globalIgnores(['dist/', 'node_modules/', 'coverage/', '**/*.d.ts'], 'aqueduct/ignores'),

  {
    name: 'aqueduct/linter-options',
    linterOptions: { reportUnusedDisableDirectives: 'error' },
  },

  // Plain JavaScript (this file and any future build helpers): no type information.
  {
    name: 'aqueduct/javascript',
    files: JS_FILES,
    extends: [js.configs.recommended],
    languageOptions: {
      ecmaVersion: 'latest',
      sourceType: 'module',
      globals: {
        process: 'readonly',
        console: 'readonly',
        Buffer: 'readonly',
        URL: 'readonly',
        fetch: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
      },
    },
  },
  // CommonJS launchers (bin/, scripts/): `require` and `__dirname` exist there.
  {
    name: 'aqueduct/commonjs',
    files: ['bin/**/*.js', 'scripts/**/*.js'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: { require: 'readonly', module: 'writable', __dirname: 'readonly', __filename: 'readonly' },
    },
  },

  // TypeScript: type-aware rules, using the tsconfig.json that covers apps, libs, test, bench, scripts.
  {
    name: 'aqueduct/typescript',
    files: TS_FILES,
    extends: [js.configs.recommended, tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: {
        projectService: true,
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      'require-await': 'off',
      '@typescript-eslint/require-await': 'error',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_' },
      ],
      // NB: do not enable `consistent-type-imports`: with emitDecoratorMetadata, turning a constructor
      // parameter's class import into `import type` silently breaks Nest dependency injection.
    },
  },

  // Everything: plain-code rules. Prettier's config goes before `curly`, because it switches
  // `curly` off (it is compatible with Prettier when set to "all").
  prettier,
  {
    name: 'aqueduct/style',
    files: [...TS_FILES, ...JS_FILES],
    rules: {
      curly: ['error', 'all'],
      eqeqeq: ['error', 'always', { null: 'ignore' }],
    },
  },

  // Apps reach the shared library only through the `@app/common` alias (its public index).
  {
    name: 'aqueduct/apps-imports',
    files: ['apps/**'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            NO_RELATIVE_LIBS,
            {
              group: ['@app/common/*', '@app/common/**'],
              message: "Import from '@app/common' (its public index), not from a path inside it.",
            },
          ],
        },
      ],
    },
  },

  {
    // The CLI is a short-lived process whose cold start is its latency: the '@app/common' index
    // loads Nest, BullMQ and both apps' wiring (616 ms measured), the CLI's own modules 308 ms.
    // It imports its few modules by path; still never by a relative path into libs/.
    name: 'aqueduct/cli-imports',
    files: ['apps/cli/**'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [NO_RELATIVE_LIBS],
        },
      ],
    },
  },
  // The shared library must not depend on an app.
  {
    name: 'aqueduct/libs-imports',
    files: ['libs/**'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['../**/apps', '../**/apps/**', '/apps', '/apps/**'],
              message: 'libs/ must not import from apps/.',
            },
          ],
        },
      ],
    },
  },

  // Tests, benchmarks and scripts handle untyped JSON (JSON.parse, SSE payloads) and Vitest's
  // `expect.any()` / asymmetric matchers, which are typed `any`.
  {
    name: 'aqueduct/tests',
    files: TEST_FILES,
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
);
