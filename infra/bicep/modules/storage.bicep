// The storage account: the Functions host's own storage (AzureWebJobsStorage, identity-based), the blob
// container Flex Consumption deploys the app package from, and the service's tables.
// Shared-key (account key and SAS) access is disabled, so only Entra identities with RBAC roles get in.
param name string
param location string
param tags object

@description('Prefix of every table name (MC_TABLE_PREFIX).')
param tablePrefix string = ''

@description('Replication. Geo-redundant by default (the tables are the account registry); pick Standard_ZRS or Standard_LRS in a region without a paired region.')
@allowed([
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
  'Standard_ZRS'
  'Standard_LRS'
])
param skuName string = 'Standard_GRS'

@description('Blob container that holds the deployment package.')
param deploymentContainerName string = 'app-package'

// The tables the code uses: shared/tables/__init__.py TABLES, except `secrets`, which only the local
// (non-Azure) secret store uses. tests/test_infra.py compares the two lists.
var serviceTables = [
  'accounts'
  'principals'
  'flows'
  'links'
  'apps'
  'apitokens'
  'outbox'
  'webhooks'
  'deliveries'
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in serviceTables: {
  parent: tableService
  name: '${tablePrefix}${table}'
}]

output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output tableEndpoint string = storage.properties.primaryEndpoints.table
output deploymentContainerName string = deploymentContainer.name
