"""Dockerfiles modelled on the documented layer-order patterns of real ecosystems, for the
differential cache test: each is built by the ``dockapp_cache`` check and by the plain
docker CLI, and the per-step hits must agree.

The tools (npm, yarn, pip, cargo, ...) are stand-ins installed in ``TOOLBOX``: shell scripts
that print their arguments. A RUN step's cache key is its text and its parent layer, never
what the command does, so stand-ins give the real patterns' cache behaviour. Where a
pattern depends on a tool writing the same output twice (cargo chef's recipe), the
stand-in writes fixed content.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TOOLBOX_IMAGE = "dockapp-test/toolbox:3"
TOOLBOX_DOCKERFILE = """
FROM dockapp-test/busybox:1
RUN for t in npm yarn pnpm pip poetry uv bundle go composer mvn gradle dotnet deno bun mix; do \
      printf '#!/bin/sh\\necho "%s $*"\\n' "$t" > /bin/$t && chmod +x /bin/$t; done
RUN printf '#!/bin/sh\\n[ "$1 $2" = "chef prepare" ] && echo fixed-recipe > recipe.json\\necho "cargo $*"\\n' \
      > /bin/cargo && chmod +x /bin/cargo
"""
ONBUILD_PARENT = "dockapp-test/onbuild-node:3"
ONBUILD_PARENT_DOCKERFILE = f"""
FROM {TOOLBOX_IMAGE}
WORKDIR /app
ONBUILD COPY package.json /app/
ONBUILD RUN npm ci
ONBUILD COPY . /app/
"""

NODE_FILES = {"package.json": '{"name": "x"}\n', "package-lock.json": "{}\n", "server.js": "1\n", "src/a.js": "a\n"}


@dataclass(frozen=True)
class Case:
    name: str
    pattern: str
    dockerfile: str
    files: dict[str, str]
    change: list[str]
    cached: list[object] = field(default_factory=list)
    ok: dict[str, bool] = field(default_factory=lambda: {"classic": True, "buildkit": True})
    lint: str | None = None  # the tool the lint must name, or None for no finding
    strict: bool = False
    builders: tuple[str, ...] = ("classic", "buildkit")
    unprotected: bool = False  # the report must show steps allowed to miss that hit
    build_args: dict[str, str] = field(default_factory=dict)
    #: For a failing case: the files the advice must copy first (verified by a build), in order.
    advice: tuple[str, ...] = ()


T = TOOLBOX_IMAGE
CARGO_CHEF = (
    f"FROM {T} AS chef\nWORKDIR /app\n"
    "FROM chef AS planner\nCOPY . .\nRUN cargo chef prepare --recipe-path recipe.json\n"
    "FROM chef AS builder\nCOPY --from=planner /app/recipe.json recipe.json\n"
    "RUN cargo chef cook --release --recipe-path recipe.json\nCOPY . .\nRUN cargo build --release\n"
)
CARGO_FILES = {"Cargo.toml": "[p]\n", "Cargo.lock": "#\n", "src/main.rs": "fn main(){}\n"}
# Shapes of real Dockerfiles that the marker got wrong (cache marker II), written afresh.
NPM_FIRST = "COPY package.json package-lock.json ./\nRUN npm ci\nCOPY . .\n"
SHAPES = [
    Case(
        "bom",
        "a byte-order mark before FROM (2 of 24 real repositories)",
        f"\ufeffFROM {T}\nWORKDIR /app\n{NPM_FIRST}",
        NODE_FILES,
        ["server.js"],
        ["RUN npm ci"],
    ),
    Case(
        "copy-arg-default",
        "COPY ${JAR_FILE} with the ARG's default (Spring layertools)",
        f"FROM {T}\nWORKDIR /app\nARG JAR_FILE=target/*.jar\nRUN echo prepare > /prep\nCOPY ${{JAR_FILE}} app.jar\n"
        "RUN echo unpack\n",
        {"target/app.jar": "jar\n", "src/Main.java": "class Main {}\n"},
        ["target/app.jar"],
        ["RUN echo prepare*"],
    ),
    Case(
        "copy-arg-build-arg",
        "COPY $JAR_FILE with the value given as a build arg",
        f"FROM {T}\nWORKDIR /app\nARG JAR_FILE\nRUN echo prepare > /prep\nCOPY $JAR_FILE app.jar\nRUN echo unpack\n",
        {"build/libs/app.jar": "jar\n", "src/Main.java": "class Main {}\n"},
        ["build/libs/app.jar"],
        ["RUN echo prepare*"],
        build_args={"JAR_FILE": "build/libs/app.jar"},
    ),
    Case(
        "lowercase",
        "lowercase instructions",
        f"from {T}\nworkdir /app\ncopy package.json package-lock.json ./\nrun npm ci\ncopy . .\nrun pnpm build\n",
        NODE_FILES,
        ["server.js"],
        ["RUN npm ci"],
    ),
    Case(
        "quoted-workdir",
        "a quoted WORKDIR (BuildKit prints it unquoted)",
        f"FROM {T}\nWORKDIR '/app'\n{NPM_FIRST}",
        NODE_FILES,
        ["server.js"],
        ["RUN npm ci"],
    ),
    Case(
        "manifest-in-subfolder",
        "pip: the app folder copied whole before the install (cache-hostile)",
        f"FROM {T}\nWORKDIR /app\nCOPY app/ /app\nRUN pip install -r requirements.txt\nRUN echo done\n",
        {"app/requirements.txt": "flask\n", "app/main.py": "1\n"},
        ["app/main.py"],
        ["RUN pip install*"],
        ok={"classic": False, "buildkit": False},
        lint="pip",
        advice=("app/requirements.txt",),
    ),
    Case(
        "workdir-switch",
        "npm: a second install in another WORKDIR after COPY . (cache-hostile)",
        f"FROM {T}\nWORKDIR /app\n{NPM_FIRST}WORKDIR /app/frontend\nRUN npm install\nRUN npm run build\n",
        {
            **NODE_FILES,
            "frontend/package.json": "{}\n",
            "frontend/package-lock.json": "{}\n",
            "frontend/src/a.js": "1\n",
        },
        ["frontend/src/a.js"],
        ["RUN npm install"],
        ok={"classic": False, "buildkit": False},
        lint="npm",
        advice=("frontend/package.json", "frontend/package-lock.json"),
    ),
    Case(
        "pnpm-workspace",
        "pnpm workspace: COPY . before the install (cache-hostile)",
        f"FROM {T}\nWORKDIR /app\nCOPY . .\nRUN pnpm install --frozen-lockfile\nRUN pnpm -r build\n",
        {
            "package.json": "{}\n",
            "pnpm-lock.yaml": "x\n",
            "pnpm-workspace.yaml": "packages:\n  - 'packages/*'\n",
            "packages/a/package.json": "{}\n",
            "packages/a/src/index.ts": "1\n",
        },
        ["packages/a/src/index.ts"],
        ["RUN pnpm install*"],
        ok={"classic": False, "buildkit": False},
        lint="pnpm",
        advice=("package.json", "pnpm-lock.yaml", "pnpm-workspace.yaml", "packages/a/package.json"),
    ),
    Case(
        "deno-named-file",
        "deno: deno cache of a file the broad COPY brings (cache-hostile)",
        f"FROM {T}\nWORKDIR /app\nCOPY . .\nRUN deno cache src/dep.ts\nRUN echo done\n",
        {"deno.json": "{}\n", "src/dep.ts": "1\n", "src/main.ts": "2\n"},
        ["src/main.ts"],
        ["RUN deno cache*"],
        ok={"classic": False, "buildkit": False},
        lint="deno",
        advice=("deno.json", "src/dep.ts"),
    ),
    Case(
        "install-script",
        "a RUN of a script the broad COPY brings (the new user's case)",
        f"FROM {T}\nWORKDIR /app\nCOPY . /app\nRUN sh /app/install-deps.sh\nRUN echo done\n",
        {"install-deps.sh": "echo deps\n", "server.js": "1\n"},
        ["server.js"],
        ["RUN sh /app/install-deps.sh"],
        ok={"classic": False, "buildkit": False},
        advice=("install-deps.sh",),
    ),
]

CASES = [
    Case(
        "npm-good",
        "npm: manifests, install, sources",
        f"FROM {T}\nWORKDIR /app\nCOPY package.json package-lock.json ./\nRUN npm ci\nCOPY . .\nRUN npm run build\n",
        NODE_FILES,
        ["server.js"],
        ["RUN npm ci"],
    ),
    Case(
        "npm-tutorial",
        "npm: COPY . before install (cache-hostile)",
        f"FROM {T}\nWORKDIR /app\nCOPY package.json /app\nCOPY . /app\nRUN npm install\n",
        NODE_FILES,
        ["server.js"],
        ["RUN npm install"],
        ok={"classic": False, "buildkit": False},
        lint="npm",
    ),
    Case(
        "yarn-three-stage",
        "Next.js-style deps / builder / runner with yarn",
        f"FROM {T} AS base\nWORKDIR /app\n"
        "FROM base AS deps\nCOPY package.json yarn.lock ./\nRUN yarn install --frozen-lockfile\n"
        "FROM base AS builder\nCOPY --from=deps /app/package.json ./deps.json\nCOPY . .\nRUN yarn build\n"
        'FROM base AS runner\nENV NODE_ENV=production\nCOPY --from=builder /app/src ./src\nCMD ["yarn", "start"]\n',
        {"package.json": "{}\n", "yarn.lock": "#\n", "src/index.js": "1\n"},
        ["src/index.js"],
        [("deps", "RUN yarn install")],
    ),
    Case(
        "pnpm-child-installs",
        "pnpm: manifests in a base stage, installs in child stages",
        f"FROM {T} AS base\nWORKDIR /app\nCOPY package.json pnpm-lock.yaml ./\n"
        "FROM base AS prod-deps\nRUN pnpm install --prod --frozen-lockfile\n"
        "FROM base AS build\nRUN pnpm install --frozen-lockfile\nCOPY . .\nRUN pnpm run build\n"
        "FROM base\nCOPY --from=prod-deps /app/package.json /prod.json\nCOPY --from=build /app/src /app/dist\n",
        {"package.json": "{}\n", "pnpm-lock.yaml": "x\n", "src/a.ts": "1\n"},
        ["src/a.ts"],
        ["RUN pnpm install --prod*", ("build", "RUN pnpm install --frozen-lockfile")],
    ),
    Case(
        "pnpm-broad-base",
        "pnpm: COPY . in a base stage, installs in a child (cache-hostile)",
        f"FROM {T} AS base\nWORKDIR /app\nCOPY . .\nFROM base AS deps\nRUN pnpm install\n",
        {"package.json": "{}\n", "pnpm-lock.yaml": "x\n", "src/a.ts": "1\n"},
        ["src/a.ts"],
        [("deps", "RUN pnpm install")],
        ok={"classic": False, "buildkit": False},
        lint="pnpm",
    ),
    Case(
        "pip-requirements",
        "pip: requirements first",
        f"FROM {T}\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install --no-cache-dir -r requirements.txt\n"
        'COPY . .\nCMD ["python", "app.py"]\n',
        {"requirements.txt": "flask\n", "app.py": "1\n"},
        ["app.py"],
        ["RUN pip install*"],
    ),
    Case(
        "poetry",
        "poetry: install --no-root, then the project",
        f"FROM {T}\nWORKDIR /app\nCOPY pyproject.toml poetry.lock ./\nRUN poetry install --no-root\n"
        "COPY . .\nRUN poetry install\n",
        {"pyproject.toml": "[x]\n", "poetry.lock": "#\n", "app/main.py": "1\n"},
        ["app/main.py"],
        ["RUN poetry install --no-root"],
    ),
    Case(
        "uv-bind-mounts",
        "uv: bind-mounted lock file, project installed last",
        f"FROM {T}\nWORKDIR /app\n"
        "RUN --mount=type=bind,source=uv.lock,target=uv.lock "
        "--mount=type=bind,source=pyproject.toml,target=pyproject.toml uv sync --frozen --no-install-project\n"
        "COPY . /app\nRUN uv sync --frozen\n",
        {"pyproject.toml": "[x]\n", "uv.lock": "#\n", "app/main.py": "1\n"},
        ["app/main.py"],
        ["RUN --mount=* uv sync --frozen --no-install-project"],
        builders=("buildkit",),
    ),
    Case(
        "uv-lock-change",
        "uv: a lock-file change reaches the bind-mounted install",
        f"FROM {T}\nWORKDIR /app\n"
        "RUN --mount=type=bind,source=uv.lock,target=uv.lock uv sync --frozen --no-install-project\n"
        "COPY . /app\nRUN uv sync --frozen\n",
        {"pyproject.toml": "[x]\n", "uv.lock": "#\n", "app/main.py": "1\n"},
        ["uv.lock"],
        builders=("buildkit",),
    ),
    Case(
        "cargo-chef",
        "cargo-chef: planner, cook, build (strict: the recipe must not change)",
        CARGO_CHEF,
        CARGO_FILES,
        ["src/main.rs"],
        strict=True,
    ),
    Case(
        "cargo-chef-unprotected",
        "cargo-chef without strict: the cook hits but is not protected",
        CARGO_CHEF,
        CARGO_FILES,
        ["src/main.rs"],
        unprotected=True,
    ),
    Case(
        "composer-15-steps",
        "composer: a stage of 15 steps (padded positions on BuildKit)",
        f"FROM {T}\nWORKDIR /var/www\n"
        + "".join(f"RUN echo ext-{n} > /ext-{n}\n" for n in range(1, 10))
        + "COPY composer.json composer.lock ./\nRUN composer install --no-scripts --no-autoloader\n"
        "COPY . .\nRUN composer dump-autoload --optimize\nRUN echo done\n",
        {"composer.json": "{}\n", "composer.lock": "{}\n", "src/App.php": "<?php\n"},
        ["src/App.php"],
        ["RUN composer install*", "RUN echo ext-2 > /ext-2"],
    ),
    Case(
        "go-multi-stage",
        "go: modules first, static binary copied into a final stage",
        f"FROM {T} AS build\nWORKDIR /src\nCOPY go.mod go.sum ./\nRUN go mod download\nCOPY . .\n"
        "RUN mkdir -p /out && go build -o /out/app . && echo bin > /out/app\n"
        f'FROM {T}\nCOPY --from=build /out/app /app\nENTRYPOINT ["/app"]\n',
        {"go.mod": "module x\n", "go.sum": "\n", "main.go": "package main\n"},
        ["main.go"],
        ["RUN go mod download"],
        unprotected=True,  # the stand-in's binary is the same bytes every time: its COPY --from hits
    ),
    Case(
        "go-sources-first",
        "go: COPY . before go mod download (cache-hostile)",
        f"FROM {T}\nWORKDIR /src\nCOPY . .\nRUN go mod download\nRUN go build -o /app .\n",
        {"go.mod": "module x\n", "go.sum": "\n", "main.go": "package main\n"},
        ["main.go"],
        ["RUN go mod download"],
        ok={"classic": False, "buildkit": False},
        lint="go",
    ),
    Case(
        "maven",
        "maven: pom first, dependency:go-offline",
        f"FROM {T}\nWORKDIR /app\nCOPY pom.xml .\nRUN mvn -B dependency:go-offline\nCOPY src ./src\n"
        "RUN mvn -B package -DskipTests\n",
        {"pom.xml": "<project/>\n", "src/main/java/App.java": "class App {}\n"},
        ["src/main/java/App.java"],
        ["RUN mvn -B dependency:go-offline"],
    ),
    Case(
        "gradle",
        "gradle: build scripts first, dependencies task",
        f"FROM {T}\nWORKDIR /app\nCOPY build.gradle settings.gradle ./\nRUN gradle dependencies --no-daemon\n"
        "COPY src src\nRUN gradle build --no-daemon\n",
        {"build.gradle": "x\n", "settings.gradle": "x\n", "src/App.kt": "x\n"},
        ["src/App.kt"],
        ["RUN gradle dependencies*"],
    ),
    Case(
        "dotnet",
        "dotnet: project file first, restore, publish",
        f"FROM {T} AS build\nWORKDIR /src\nCOPY *.csproj ./\nRUN dotnet restore\nCOPY . .\n"
        "RUN dotnet publish -c Release -o /out\n"
        f"FROM {T}\nWORKDIR /app\nCOPY --from=build /src/App.csproj .\n",
        {"App.csproj": "<Project/>\n", "Program.cs": "class P {}\n"},
        ["Program.cs"],
        ["RUN dotnet restore"],
        unprotected=True,  # the final stage's COPY --from copies the unchanged project file: it hits
    ),
    Case(
        "onbuild-parent",
        "ONBUILD parent: its triggers copy the sources into every child",
        f'FROM {ONBUILD_PARENT}\nRUN echo child > /child\nCMD ["npm", "start"]\n',
        NODE_FILES,
        ["server.js"],
    ),
    Case(
        "escape-directive",
        "escape directive with backtick continuations",
        f"# escape=`\nFROM {T}\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install `\n    -r requirements.txt\n"
        "COPY . .\n",
        {"requirements.txt": "flask\n", "app.py": "1\n"},
        ["app.py"],
        ["RUN pip install*"],
    ),
    Case(
        "json-wildcards",
        "JSON-form COPY with wildcards",
        f'FROM {T}\nWORKDIR /app\nCOPY ["package*.json", "./"]\nRUN ["npm", "ci"]\nCOPY ["src/", "./src/"]\n',
        NODE_FILES,
        ["package-lock.json"],
    ),
    Case(
        "dockerignore",
        ".dockerignore keeps docs out: editing them misses nothing",
        f"FROM {T}\nWORKDIR /app\nCOPY . .\nRUN npm ci\n",
        {**NODE_FILES, ".dockerignore": "docs\n", "docs/readme.md": "x\n"},
        ["docs/readme.md"],
        ["RUN npm ci"],
        lint="npm",
    ),
    Case(
        "dockerfile-dockerignore",
        "<Dockerfile>.dockerignore: BuildKit reads it, the classic builder does not",
        f"FROM {T}\nWORKDIR /app\nCOPY . .\nRUN npm ci\n",
        {**NODE_FILES, "Dockerfile.dockerignore": "docs\n", "docs/readme.md": "x\n"},
        ["docs/readme.md"],
        ["RUN npm ci"],
        ok={"classic": False, "buildkit": True},
        lint="npm",
    ),
    Case(
        "build-arg",
        "a build arg used by a late step",
        f"FROM {T}\nWORKDIR /app\nCOPY package.json .\nRUN npm ci\nARG VERSION=1\nRUN echo $VERSION > /version\n",
        NODE_FILES,
        ["--build-arg VERSION={RANDOM}"],
        ["RUN npm ci"],
    ),
    Case(
        "derived-ten-steps",
        "a stage built FROM a stage, with ten steps",
        f"FROM {T} AS base\nWORKDIR /app\nCOPY a.txt /app/\nRUN cat a.txt > /b1\n"
        "FROM base AS child\nCOPY b.txt /app/\nRUN cat b.txt > /b2\n"
        + "".join(f"RUN echo {n} > /n{n}\n" for n in range(1, 9))
        + "FROM base\nCOPY --from=child /b2 /b2\nRUN echo final\n",
        {"a.txt": "a\n", "b.txt": "b\n"},
        ["b.txt"],
        [("base", "RUN cat a.txt*")],
    ),
    *SHAPES,
]
