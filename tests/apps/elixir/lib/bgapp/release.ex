defmodule Bgapp.Release do
  @moduledoc """
  What `bin/bgapp eval 'Bgapp.Release.migrate()'` runs. There is no database in the tests:
  a migration appends a line to $MIGRATIONS_FILE, and fails if the release holds FAIL_MIGRATION.
  """
  def migrate do
    root = System.get_env("RELEASE_ROOT") || "."

    if File.exists?(Path.join(root, "FAIL_MIGRATION")) do
      IO.puts(:stderr, "migration failed on purpose")
      System.halt(1)
    end

    file = System.fetch_env!("MIGRATIONS_FILE")
    File.write!(file, "migrated #{Bgapp.version()} colour=#{Bgapp.colour()}\n", [:append])
    IO.puts("migrated #{Bgapp.version()}")
  end
end
